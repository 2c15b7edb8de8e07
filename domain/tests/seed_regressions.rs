//! The original system's money bugs (`research/seed-repo.md` §4.6, §4.7, §9.1), each as a
//! named regression driven through [`Marketplace::execute`] the way the services drive it.
//! Every command's outcome is checked: an accepted one leaves a balanced ledger, a refused one
//! leaves the marketplace exactly as it was.

use domain::challenge::ChallengeCommand;
use domain::digest::Digest;
use domain::dispute::{DisputeCommand, DisputeError, DisputeOutcome};
use domain::escrow::{EscrowCommand, EscrowError, EscrowEvent};
use domain::funds::{DepositCommand, DepositError, PayoutCommand, PayoutError};
use domain::ids::{ChallengeId, DepositId, DisputeId, JobId, PartyId, PayoutId, name_uuid};
use domain::job::{JobCommand, JobError, JobEvent, JobStatus, ResultValue, WorkloadSpec, commitment_for};
use domain::ledger::{LedgerAccount, Provider};
use domain::policy::{TaskClass, VerificationPolicy};
use domain::{Actor, Command, Currency, Event, MarketError, Marketplace, Money, Role, Timestamp};
use uuid::Uuid;

// ---- the cast ---------------------------------------------------------------------------------

const JOB: JobId = JobId(Uuid::from_u128(0x5eed_0001));
const CLIENT: PartyId = PartyId(Uuid::from_u128(0xc1));
const OTHER_CLIENT: PartyId = PartyId(Uuid::from_u128(0xc2));
const W1: PartyId = PartyId(Uuid::from_u128(0x71));
const W2: PartyId = PartyId(Uuid::from_u128(0x72));
const W3: PartyId = PartyId(Uuid::from_u128(0x73));
const W4: PartyId = PartyId(Uuid::from_u128(0x74));
const W5: PartyId = PartyId(Uuid::from_u128(0x75));
const W6: PartyId = PartyId(Uuid::from_u128(0x76));
const ARBITER: PartyId = PartyId(Uuid::from_u128(0xa1));
const OTHER_ARBITER: PartyId = PartyId(Uuid::from_u128(0xa2));
const FINANCE: PartyId = PartyId(Uuid::from_u128(0xf1));

/// EUR 100.00 for the client, EUR 10.00 for each worker.
const CLIENT_DEPOSIT: u64 = 10_000;
const WORKER_DEPOSIT: u64 = 1_000;
/// EUR 10.00 per replica.
const REWARD: u64 = 1_000;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

fn eur(minor_units: u64) -> Money {
    Money { minor_units, currency: Currency::Eur }
}

fn client(p: PartyId) -> Actor {
    Actor { party: p, role: Role::Client }
}

fn worker(p: PartyId) -> Actor {
    Actor { party: p, role: Role::Worker }
}

fn arbiter(p: PartyId) -> Actor {
    Actor { party: p, role: Role::Arbiter }
}

fn finance() -> Actor {
    Actor { party: FINANCE, role: Role::Finance }
}

/// The result manifest a worker computed: honest (`A`) or not (`B`).
fn result(letter: u8) -> ResultValue {
    ResultValue { digest: Digest([letter; 32]), metric_micros: None }
}

fn salt(w: PartyId) -> Digest {
    Digest::of(format!("salt of {w}").as_bytes())
}

const A: u8 = 0xa;
const B: u8 = 0xb;

/// `dscm_verified` as the seed defines it: 3 replicas, quorum 2, 24 h, collateral 10 %,
/// slash 30 %.
fn dscm_verified() -> VerificationPolicy {
    TaskClass::DscmVerified.defaults()
}

// ---- a marketplace with a clock ------------------------------------------------------------

struct Market {
    m: Marketplace,
    now: Timestamp,
}

impl Market {
    /// The client holds EUR 100.00 and each worker EUR 10.00, captured through Stripe.
    fn new(workers: &[PartyId]) -> Market {
        let mut market = Market { m: Marketplace::new(7), now: Timestamp::from_unix_secs(1_795_651_200) };
        market.deposit(CLIENT, CLIENT_DEPOSIT);
        for w in workers {
            market.deposit(*w, WORKER_DEPOSIT);
        }
        market
    }

    fn deposit(&mut self, party: PartyId, amount: u64) {
        self.deposit_in(party, eur(amount));
    }

    fn deposit_in(&mut self, party: PartyId, amount: Money) {
        let external_ref = format!("pi_{party}_{}", self.m.log.len());
        let id = DepositId::for_external_reference(Provider::Stripe, &external_ref);
        let cmd = DepositCommand::RecordCaptured { party, amount, provider: Provider::Stripe, external_ref };
        self.ok(Command::Deposit(id, cmd), finance());
    }

    fn advance(&mut self, secs: u64) {
        self.now = self.now.plus_secs(secs);
    }

    /// Run an accepted command; the ledger must balance afterwards.
    fn ok(&mut self, cmd: Command, actor: Actor) -> Vec<Event> {
        let described = format!("{cmd:?} by {actor:?}");
        let events = self.m.execute(cmd, actor, self.now).unwrap_or_else(|e| panic!("{described}: refused: {e}"));
        self.m.ledger.check().unwrap_or_else(|v| panic!("{described}: {v}"));
        for escrow in self.m.escrows.values() {
            assert!(escrow.is_conserved(), "{described}: {escrow:?}");
        }
        events
    }

    /// Run a refused command; nothing at all may change.
    fn refused(&mut self, cmd: Command, actor: Actor) -> MarketError {
        let before = self.m.clone();
        let described = format!("{cmd:?} by {actor:?}");
        let Err(e) = self.m.execute(cmd, actor, self.now) else { panic!("{described}: accepted") };
        assert_unchanged(&before, &self.m, &described);
        e
    }

    fn post(&mut self, policy: VerificationPolicy, reward: u64, task_count: u32) {
        let cmd = JobCommand::Post {
            job: JOB,
            class: TaskClass::DscmVerified,
            policy,
            reward_per_replica: eur(reward),
            task_count,
            workload: WorkloadSpec { name: "protein-fold".into(), params: "{}".into(), input_digest: None },
            expires_in_secs: 7 * DAY,
        };
        self.ok(Command::Job(JOB, cmd), client(CLIENT));
    }

    fn funded_job(&mut self, policy: VerificationPolicy, reward: u64) {
        self.post(policy, reward, 1);
        self.ok(Command::Job(JOB, JobCommand::Fund), client(CLIENT));
    }

    fn claim(&mut self, w: PartyId) -> u32 {
        let events = self.ok(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(w));
        match events.first() {
            Some(Event::Job(_, JobEvent::ReplicaClaimed { task, .. })) => *task,
            other => panic!("not a claim: {other:?}"),
        }
    }

    fn commit(&mut self, w: PartyId, task: u32, letter: u8) -> Vec<Event> {
        let commitment = commitment_for(JOB, task, w, &result(letter), salt(w));
        self.ok(Command::Job(JOB, JobCommand::CommitResult { task, commitment }), worker(w))
    }

    fn reveal(&mut self, w: PartyId, task: u32, letter: u8) -> Vec<Event> {
        self.ok(Command::Job(JOB, JobCommand::RevealResult { task, result: result(letter), salt: salt(w) }), worker(w))
    }

    /// Each worker claims, then each commits, then each reveals its letter; returns the task and
    /// the events of the last reveal (the verification).
    fn compute(&mut self, work: &[(PartyId, u8)]) -> (u32, Vec<Event>) {
        let task = work.iter().map(|(w, _)| self.claim(*w)).last().expect("at least one worker");
        for (w, letter) in work {
            self.commit(*w, task, *letter);
        }
        let mut last = Vec::new();
        for (w, letter) in work {
            last = self.reveal(*w, task, *letter);
        }
        (task, last)
    }

    fn balance(&self, account: LedgerAccount) -> i128 {
        self.m.ledger.balance(account, Currency::Eur)
    }

    fn available(&self, p: PartyId) -> i128 {
        self.balance(LedgerAccount::Available { party: p })
    }

    fn pending(&self, p: PartyId) -> i128 {
        self.balance(LedgerAccount::WorkerPending { worker: p })
    }

    fn collateral(&self, p: PartyId) -> i128 {
        self.balance(LedgerAccount::WorkerCollateral { worker: p })
    }

    /// Everything a party has on the platform: available, collateral and pending.
    fn total_of(&self, p: PartyId) -> i128 {
        self.available(p) + self.collateral(p) + self.pending(p)
    }

    fn status(&self) -> JobStatus {
        self.m.jobs.get(&JOB).map_or(JobStatus::None, |j| j.status())
    }

    fn window_closes_at(&self) -> Timestamp {
        self.m.jobs[&JOB].window_closes_at.expect("a challenge window")
    }

    fn settle_at_window_close(&mut self) -> Vec<Event> {
        self.now = self.window_closes_at();
        self.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM)
    }
}

fn assert_unchanged(before: &Marketplace, after: &Marketplace, described: &str) {
    assert_eq!(before.log.len(), after.log.len(), "{described}: a refused command wrote events");
    assert_eq!(before.log, after.log, "{described}");
    assert_eq!(before.ledger, after.ledger, "{described}: a refused command moved money");
    assert!(
        before.jobs == after.jobs
            && before.escrows == after.escrows
            && before.challenges == after.challenges
            && before.disputes == after.disputes
            && before.workers == after.workers
            && before.deposits == after.deposits
            && before.payouts == after.payouts
            && before.month_volume == after.month_volume,
        "{described}: a refused command changed an aggregate"
    );
}

fn find<T>(events: &[Event], f: impl Fn(&Event) -> Option<T>) -> T {
    events.iter().find_map(f).unwrap_or_else(|| panic!("not found in {events:?}"))
}

/// 8 % of an amount, rounded down (a client's month is far below the EUR 10,000 threshold here).
fn commission(gross: u64) -> u64 {
    gross * 8 / 100
}

// ---- §9.1.2: reward before the challenge window -----------------------------------------------

#[test]
fn no_payout_before_the_challenge_window_closes() {
    let mut m = Market::new(&[W1, W2, W3]);
    m.funded_job(dscm_verified(), REWARD);
    let (_, verification) = m.compute(&[(W1, A), (W2, A), (W3, A)]);
    let closes_at = find(&verification, |e| match e {
        Event::Job(_, JobEvent::ChallengeWindowOpened { closes_at }) => Some(*closes_at),
        _ => None,
    });
    assert_eq!(closes_at, m.now.plus_secs(DAY), "dscm_verified has a 24 h window");
    assert_eq!(m.status(), JobStatus::ChallengeWindow);

    // Earned, but only into pending: what a worker may spend has not grown by the reward.
    let collateral = REWARD / 10;
    for w in [W1, W2, W3] {
        assert_eq!(m.pending(w), REWARD as i128, "{w}");
        assert_eq!(m.available(w), (WORKER_DEPOSIT - collateral) as i128, "{w}");
        assert_eq!(m.collateral(w), collateral as i128, "{w}");
    }

    // One second early: neither the scheduler's close nor a direct release goes through.
    m.now = Timestamp(closes_at.0 - 1_000);
    let e = m.refused(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(e, MarketError::Job(JobError::WindowStillOpen { closes_at }));
    let e = m.refused(Command::Escrow(JOB, EscrowCommand::Release), Actor::SYSTEM);
    assert_eq!(e, MarketError::Escrow(EscrowError::ReleaseBeforeWindowClosed { not_before: closes_at }));
    // Nor can anyone but the platform move escrowed money, early or not.
    let e = m.refused(Command::Escrow(JOB, EscrowCommand::Release), worker(W1));
    assert_eq!(e, MarketError::Escrow(EscrowError::NotTheSystem));
    assert_eq!(m.status(), JobStatus::ChallengeWindow);

    // At closes_at it settles: reward minus commission, plus the collateral back.
    let events = m.settle_at_window_close();
    assert!(events.iter().any(|e| matches!(e, Event::Job(_, JobEvent::JobSettled { verified_tasks: 1 }))));
    assert_eq!(m.status(), JobStatus::Settled);
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), (WORKER_DEPOSIT + REWARD - commission(REWARD)) as i128, "{w}");
        assert_eq!((m.pending(w), m.collateral(w)), (0, 0), "{w}");
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128);
    assert_eq!(m.balance(LedgerAccount::PlatformFees), (3 * commission(REWARD)) as i128);
    assert_eq!(m.balance(LedgerAccount::JobEscrow { job: JOB }), 0);
    m.m.ledger.check().expect("balanced");
}

// ---- §4.6 / §9.1.3: the collateral penalty ------------------------------------------------

/// W3 is outvoted by W1 and W2 on a job with this reward and collateral/slash percentages;
/// returns (W3's loss, the client's gain from the slash, W3's collateral account afterwards).
fn outvoted_worker(reward: u64, collateral_pct: u8, slash_pct: u8) -> (i128, i128, i128) {
    let mut m = Market::new(&[W1, W2, W3]);
    let policy = VerificationPolicy { collateral_pct, slash_pct, ..dscm_verified() };
    m.funded_job(policy, reward);
    let collateral = reward * u64::from(collateral_pct) / 100;
    let held_before = m.m.ledger.held_by_platform(Currency::Eur);

    let (_, verification) = m.compute(&[(W1, A), (W2, A), (W3, B)]);
    let slashed = find(&verification, |e| match e {
        Event::Escrow(_, EscrowEvent::CollateralSlashed { worker, slashed, returned, .. }) if *worker == W3 => {
            Some((*slashed, *returned))
        }
        _ => None,
    });
    assert_eq!(slashed.0.minor_units + slashed.1.minor_units, collateral, "slashed + returned = the collateral, once");
    // Verified: W3 is out of pocket by the slash alone, at once; nothing is held for it any more.
    let loss_at_verification = i128::from(WORKER_DEPOSIT) - m.total_of(W3);
    assert_eq!(m.collateral(W3), 0);
    assert_eq!(m.pending(W3), 0, "an outvoted worker is not paid");
    assert_eq!(m.m.ledger.held_by_platform(Currency::Eur), held_before, "nothing vanished");

    m.settle_at_window_close();
    let loss = i128::from(WORKER_DEPOSIT) - m.available(W3);
    assert_eq!(loss, loss_at_verification, "settling takes nothing more from the outvoted worker");
    assert_eq!(m.total_of(W3), m.available(W3));
    // The client paid two rewards (the third, unearned, came back) and gained the slash.
    let client_gain = m.available(CLIENT) - (i128::from(CLIENT_DEPOSIT) - 2 * i128::from(reward));
    assert_eq!(m.m.ledger.held_by_platform(Currency::Eur), held_before, "nothing vanished");
    m.m.ledger.check().expect("balanced");
    (loss, client_gain, m.collateral(W3))
}

#[test]
fn slashed_collateral_is_debited_once_and_the_remainder_returned() {
    // EUR 10.00 reward, collateral 10 % = 100, slash 30 %: the worker loses exactly 30.
    assert_eq!(outvoted_worker(REWARD, 10, 30), (30, 30, 0));
    // The seed's probe: collateral 2 at 50 %. The seed took 3 and paid 1 (1 vanished); now
    // the worker loses exactly 1, the client gains exactly 1, and the other 1 comes back.
    assert_eq!(outvoted_worker(20, 10, 50), (1, 1, 0));
    // ⌊3 · 30 / 100⌋ = 0, but a slash is at least 1.
    assert_eq!(outvoted_worker(30, 10, 30), (1, 1, 0));
    // All of it at 100 %; none at 0 %.
    assert_eq!(outvoted_worker(REWARD, 10, 100), (100, 100, 0));
    assert_eq!(outvoted_worker(REWARD, 10, 0), (0, 0, 0));
}

// ---- §9.1.5: the claim TTL expired 24 h windows ---------------------------------------------

#[test]
fn a_24_hour_window_closes_normally() {
    let mut m = Market::new(&[W1, W2, W3]);
    m.funded_job(dscm_verified(), REWARD);
    // Claimed at t0; heartbeats keep the claims alive while the work takes 1 h 40 min.
    let claimed_at = m.now;
    let task = [W1, W2, W3].map(|w| m.claim(w))[0];
    m.advance(50 * 60);
    for w in [W1, W2, W3] {
        m.ok(Command::Job(JOB, JobCommand::Heartbeat { task }), worker(w));
    }
    m.advance(40 * 60);
    for w in [W1, W2, W3] {
        m.commit(w, task, A);
    }
    m.advance(10 * 60);
    for w in [W1, W2, W3] {
        m.reveal(w, task, A);
    }
    let verified_at = m.now;
    assert!(verified_at.0 - claimed_at.0 > 3_600_000, "the claims are more than an hour old");
    assert_eq!(m.window_closes_at(), verified_at.plus_secs(DAY));

    // Hours later, past every TTL of the seed: nothing expires the verified replicas.
    for hours in [1, 2, 12, 23] {
        m.now = verified_at.plus_secs(hours * HOUR + 1);
        for w in [W1, W2, W3] {
            let e = m.refused(Command::Job(JOB, JobCommand::ExpireClaim { task, worker: w }), Actor::SYSTEM);
            assert_eq!(e, MarketError::Job(JobError::AlreadyRevealed), "{w} after {hours} h");
        }
        let e = m.refused(Command::Job(JOB, JobCommand::Expire), Actor::SYSTEM);
        assert!(
            matches!(e, MarketError::Job(JobError::JobDeadlineNotReached { .. } | JobError::WrongStatus { .. })),
            "{e:?}"
        );
        assert_eq!(m.status(), JobStatus::ChallengeWindow);
        assert_eq!(m.pending(W1), REWARD as i128);
    }

    // At 24 h the window closes and pays.
    m.settle_at_window_close();
    assert_eq!(m.now, verified_at.plus_secs(DAY));
    assert_eq!(m.status(), JobStatus::Settled);
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), (WORKER_DEPOSIT + REWARD - commission(REWARD)) as i128, "{w}");
    }
    m.m.ledger.check().expect("balanced");
}

// ---- §4.8 / §9.1.13: disputes had no financial effect -----------------------------------------

fn no_quorum_dispute() -> DisputeId {
    DisputeId(name_uuid(&["dispute", "no_quorum", &JOB.to_string(), "0"]))
}

/// Two workers disagree on a 2-of-2 job: a dispute opens over the task's EUR 20.00.
fn disputed_job() -> Market {
    let mut m = Market::new(&[W1, W2]);
    let policy = VerificationPolicy { replication: 2, quorum: 2, ..dscm_verified() };
    m.funded_job(policy, REWARD);
    let (_, events) = m.compute(&[(W1, A), (W2, B)]);
    assert!(events.iter().any(|e| matches!(e, Event::Job(_, JobEvent::TaskFailedNoQuorum { .. }))), "{events:?}");
    assert_eq!(m.status(), JobStatus::Disputed);
    let dispute = no_quorum_dispute();
    m.ok(Command::Dispute(dispute, DisputeCommand::StartReview), arbiter(ARBITER));
    m
}

#[test]
fn disputes_move_money() {
    // A split, closed when the appeal deadline passes: 25 % back to the client, 75 % to each
    // worker (minus commission), collateral back in full.
    let mut m = disputed_job();
    let dispute = no_quorum_dispute();
    let under_review = m.m.ledger.clone();
    m.ok(
        Command::Dispute(dispute, DisputeCommand::Resolve { outcome: DisputeOutcome::Split { client_pct: 25 } }),
        arbiter(ARBITER),
    );
    assert_eq!(under_review, m.m.ledger, "a resolution alone moves nothing: it may still be appealed");
    let resolved = m.m.ledger.clone();
    m.advance(HOUR - 1);
    let e = m.refused(Command::Dispute(dispute, DisputeCommand::Close), Actor::SYSTEM);
    assert!(matches!(e, MarketError::Dispute(DisputeError::DeadlineNotReached { .. })), "{e:?}");
    m.advance(1);
    m.ok(Command::Dispute(dispute, DisputeCommand::Close), Actor::SYSTEM);
    assert_ne!(m.m.ledger, resolved, "closing the dispute moved money");
    assert_eq!(m.status(), JobStatus::Settled, "the only task decided: nothing verified, no window");
    let to_worker = REWARD - REWARD / 4;
    for w in [W1, W2] {
        assert_eq!(m.available(w), (WORKER_DEPOSIT + to_worker - commission(to_worker)) as i128, "{w}");
        assert_eq!((m.collateral(w), m.pending(w)), (0, 0));
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 2 * to_worker) as i128);
    assert_eq!(m.balance(LedgerAccount::PlatformFees), (2 * commission(to_worker)) as i128);
    m.m.ledger.check().expect("balanced");

    // A payout, appealed by the client and decided as a refund by the other arbiter: the
    // workers get nothing, the client everything back.
    let mut m = disputed_job();
    m.ok(Command::Dispute(dispute, DisputeCommand::Resolve { outcome: DisputeOutcome::Payout }), arbiter(ARBITER));
    m.ok(Command::Dispute(dispute, DisputeCommand::Appeal { reason: "both results are wrong".into() }), client(CLIENT));
    let e = m.refused(
        Command::Dispute(dispute, DisputeCommand::DecideAppeal { outcome: DisputeOutcome::Refund }),
        arbiter(ARBITER),
    );
    assert_eq!(e, MarketError::Dispute(DisputeError::SameArbiterOnAppeal));
    m.ok(
        Command::Dispute(dispute, DisputeCommand::DecideAppeal { outcome: DisputeOutcome::Refund }),
        arbiter(OTHER_ARBITER),
    );
    assert_eq!(m.status(), JobStatus::Settled);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
    for w in [W1, W2] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128, "{w}: nothing earned, collateral back");
    }
    m.m.ledger.check().expect("balanced");

    // A review nobody finishes resolves as a refund when its deadline passes.
    let mut m = disputed_job();
    m.advance(HOUR);
    m.ok(Command::Dispute(dispute, DisputeCommand::ExpireReview), Actor::SYSTEM);
    m.advance(HOUR);
    m.ok(Command::Dispute(dispute, DisputeCommand::Close), Actor::SYSTEM);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
    assert_eq!((m.available(W1), m.available(W2)), (WORKER_DEPOSIT as i128, WORKER_DEPOSIT as i128));
    m.m.ledger.check().expect("balanced");
}

// ---- §9.1.1: self-minted money; the idempotent capture ---------------------------------------

#[test]
fn deposits_are_idempotent_on_their_reference() {
    let mut m = Market::new(&[]);
    let record = |party, amount, external_ref: &str| {
        let id = DepositId::for_external_reference(Provider::Stripe, external_ref);
        let cmd = DepositCommand::RecordCaptured {
            party,
            amount: eur(amount),
            provider: Provider::Stripe,
            external_ref: external_ref.into(),
        };
        Command::Deposit(id, cmd)
    };
    let first = m.ok(record(CLIENT, 2_500, "pi_3Nx"), finance());
    assert_eq!(first.len(), 1);
    let after_first = m.m.clone();

    // The same capture again (a webhook delivered twice): accepted, and nothing new.
    let again = m.ok(record(CLIENT, 2_500, "pi_3Nx"), finance());
    assert!(again.is_empty(), "{again:?}");
    assert_unchanged(&after_first, &m.m, "the same capture again");
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT + 2_500) as i128);

    // The same reference with a different body is refused, whatever differs.
    for cmd in [record(CLIENT, 2_501, "pi_3Nx"), record(OTHER_CLIENT, 2_500, "pi_3Nx")] {
        let e = m.refused(cmd, finance());
        assert_eq!(e, MarketError::Deposit(DepositError::ReferenceReused { external_ref: "pi_3Nx".into() }));
    }
    // The reference is the provider's: another provider's equal reference is another capture.
    let id = DepositId::for_external_reference(Provider::Yookassa, "pi_3Nx");
    let cmd = DepositCommand::RecordCaptured {
        party: CLIENT,
        amount: eur(100),
        provider: Provider::Yookassa,
        external_ref: "pi_3Nx".into(),
    };
    assert_eq!(m.ok(Command::Deposit(id, cmd), finance()).len(), 1);

    // Nobody mints money: only finance (or the platform) records captures, and never 0.
    let e = m.refused(record(CLIENT, 1_000_000, "pi_self"), client(CLIENT));
    assert_eq!(e, MarketError::Deposit(DepositError::NotFinance));
    let e = m.refused(record(CLIENT, 0, "pi_zero"), finance());
    assert_eq!(e, MarketError::Deposit(DepositError::ZeroAmount));

    let captured = CLIENT_DEPOSIT + 2_500 + 100;
    assert_eq!(m.m.ledger.held_by_platform(Currency::Eur), captured as i128);
    m.m.ledger.check().expect("balanced");
}

#[test]
fn amounts_above_the_money_maximum_are_refused() {
    let mut m = Market::new(&[]);
    let too_much = Money::MAX_MINOR_UNITS + 1;
    let record = |amount: u64, external_ref: &str| {
        let id = DepositId::for_external_reference(Provider::Manual, external_ref);
        let cmd = DepositCommand::RecordCaptured {
            party: CLIENT,
            amount: eur(amount),
            provider: Provider::Manual,
            external_ref: external_ref.into(),
        };
        Command::Deposit(id, cmd)
    };
    for amount in [too_much, u64::MAX] {
        let e = m.refused(record(amount, "wire-huge"), finance());
        assert_eq!(e, MarketError::Deposit(DepositError::AmountTooLarge(amount)));
    }
    // Two maximal deposits put more than one Money's maximum on the balance; still no single
    // payout may carry more than the maximum.
    m.ok(record(Money::MAX_MINOR_UNITS, "wire-1"), finance());
    m.ok(record(Money::MAX_MINOR_UNITS, "wire-2"), finance());
    let payout = PayoutId(Uuid::from_u128(0xba));
    let e = m.refused(
        Command::Payout(payout, PayoutCommand::Request { amount: eur(too_much), provider: Provider::Stripe }),
        client(CLIENT),
    );
    assert_eq!(e, MarketError::Payout(PayoutError::AmountTooLarge(too_much)));
    m.ok(
        Command::Payout(
            payout,
            PayoutCommand::Request { amount: eur(Money::MAX_MINOR_UNITS), provider: Provider::Stripe },
        ),
        client(CLIENT),
    );
    m.m.ledger.check().expect("balanced");
}

// ---- §3.3 / §4.5: replication among distinct workers -----------------------------------------

#[test]
fn a_worker_never_gets_two_replicas_of_one_task() {
    let mut m = Market::new(&[W1, W2, W3, W4, W5, W6]);
    m.funded_job(dscm_verified(), REWARD);
    let task = m.claim(W1);
    for wanted in [None, Some(task)] {
        let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: wanted }), worker(W1));
        assert_eq!(e, MarketError::Job(JobError::NothingToClaim), "{wanted:?}");
    }
    // Not even after its own claim expires and the slot cools down.
    m.advance(HOUR);
    m.ok(Command::Job(JOB, JobCommand::ExpireClaim { task, worker: W1 }), Actor::SYSTEM);
    m.advance(60);
    let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: Some(task) }), worker(W1));
    assert_eq!(e, MarketError::Job(JobError::NothingToClaim));
    assert_eq!(m.claim(W2), task, "the freed slot goes to someone else");
    m.claim(W3);
    m.claim(W4);
    let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(W5));
    assert_eq!(e, MarketError::Job(JobError::NothingToClaim), "three replicas, three workers");
    for w in [W2, W3, W4] {
        m.commit(w, task, A);
    }
    for w in [W2, W3, W4] {
        m.reveal(w, task, A);
    }

    // A challenge's re-execution goes to fresh workers only: not to the accused, nor to a
    // worker whose claim expired on this task.
    let challenge = ChallengeId(Uuid::from_u128(0xc4a1));
    let open = ChallengeCommand::Open { challenge, job: JOB, task, reason: "wrong fold".into(), bond: eur(REWARD) };
    m.ok(Command::Challenge(challenge, open), client(CLIENT));
    for w in [W1, W2, W3, W4] {
        let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(w));
        assert_eq!(e, MarketError::Job(JobError::NothingToClaim), "{w}");
    }
    assert_eq!(m.claim(W5), task);
    let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(W5));
    assert_eq!(e, MarketError::Job(JobError::NothingToClaim));

    let job = &m.m.jobs[&JOB];
    let t = &job.tasks[task as usize];
    let mut holders: Vec<PartyId> = t
        .round
        .slots
        .iter()
        .chain(&t.reexecution.as_ref().expect("re-execution").1.slots)
        .filter_map(|s| match s.state {
            domain::job::SlotState::Claimed { worker, .. } => Some(worker),
            _ => None,
        })
        .collect();
    let count = holders.len();
    holders.sort();
    holders.dedup();
    assert_eq!(holders.len(), count, "one slot per worker per task");
    m.m.ledger.check().expect("balanced");
}

// ---- the unit of work: all or nothing ----------------------------------------------------------

#[test]
fn rejected_commands_change_nothing() {
    let mut m = Market::new(&[W1, W2, W3, W4]);
    m.post(dscm_verified(), 4_000, 1); // budget EUR 120.00 > the client's EUR 100.00
    // The job accepts the funding, its escrow refuses it: the unit is refused as a whole.
    let e = m.refused(Command::Job(JOB, JobCommand::Fund), client(CLIENT));
    assert!(matches!(e, MarketError::Escrow(EscrowError::InsufficientFunds { .. })), "{e:?}");
    assert_eq!(m.status(), JobStatus::Posted);
    m.deposit(CLIENT, 5_000);
    m.ok(Command::Job(JOB, JobCommand::Fund), client(CLIENT));

    // A claim whose collateral (EUR 4.00) the worker cannot post is no claim.
    let payout = PayoutId(Uuid::from_u128(0xba1));
    m.ok(Command::Payout(payout, PayoutCommand::Request { amount: eur(700), provider: Provider::Stripe }), worker(W4));
    let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(W4));
    assert!(matches!(e, MarketError::Escrow(EscrowError::InsufficientFunds { .. })), "{e:?}");

    let (task, _) = m.compute(&[(W1, A), (W2, A), (W3, A)]);
    assert_eq!(m.status(), JobStatus::ChallengeWindow);

    let challenge = ChallengeId(Uuid::from_u128(0xc4a1));
    let open = |bond| {
        Command::Challenge(
            challenge,
            ChallengeCommand::Open { challenge, job: JOB, task, reason: "suspicious".into(), bond },
        )
    };
    let refused: Vec<(Command, Actor)> = vec![
        // Wrong actors.
        (Command::Job(JOB, JobCommand::CloseChallengeWindow), client(CLIENT)),
        (Command::Job(JOB, JobCommand::Cancel), client(OTHER_CLIENT)),
        (Command::Job(JOB, JobCommand::ClaimTask { task: None }), client(CLIENT)),
        (Command::Escrow(JOB, EscrowCommand::Release), worker(W1)),
        (Command::Escrow(JOB, EscrowCommand::Refund), client(CLIENT)),
        (Command::Dispute(no_quorum_dispute(), DisputeCommand::StartReview), arbiter(ARBITER)),
        // Wrong state or time.
        (Command::Job(JOB, JobCommand::Fund), client(CLIENT)),
        (Command::Job(JOB, JobCommand::Cancel), client(CLIENT)),
        (Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM),
        (Command::Escrow(JOB, EscrowCommand::Release), Actor::SYSTEM),
        (Command::Job(JOB, JobCommand::RevealResult { task, result: result(A), salt: salt(W1) }), worker(W1)),
        (Command::Job(JOB, JobCommand::CommitResult { task, commitment: Digest([0; 32]) }), worker(W4)),
        // Money that is not there.
        (
            Command::Payout(
                PayoutId(Uuid::from_u128(0xba2)),
                PayoutCommand::Request { amount: eur(WORKER_DEPOSIT), provider: Provider::Stripe },
            ),
            worker(W1),
        ),
        (Command::Payout(payout, PayoutCommand::Request { amount: eur(1), provider: Provider::Stripe }), worker(W4)),
        (open(eur(0)), client(CLIENT)),
    ];
    for (cmd, actor) in refused {
        m.refused(cmd, actor);
    }
    // The challenge aggregate takes the bond, then the job refuses the challenge: the unit is
    // refused as a whole and no bond is taken.
    m.deposit(CLIENT, 5_000);
    let bond_below_reward = m.refused(open(eur(3_999)), client(CLIENT));
    assert_eq!(
        bond_below_reward,
        MarketError::Job(JobError::BondTooSmall { offered: eur(3_999), required: eur(4_000) })
    );
    let other_currency = Money { minor_units: 4_000, currency: Currency::Usd };
    m.deposit_in(CLIENT, other_currency);
    let in_usd = m.refused(open(other_currency), client(CLIENT));
    assert_eq!(in_usd, MarketError::Job(JobError::BondTooSmall { offered: other_currency, required: eur(4_000) }));
    m.deposit(W1, 4_000);
    let accused = m.refused(open(eur(4_000)), worker(W1));
    assert_eq!(accused, MarketError::Job(JobError::ChallengerIsAccused));
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT + 10_000 - 12_000) as i128);

    // The window still closes and pays as if none of that had been tried.
    m.settle_at_window_close();
    for w in [W1, W2, W3] {
        let extra = if w == W1 { 4_000 } else { 0 };
        assert_eq!(m.available(w), (WORKER_DEPOSIT + extra + 4_000 - commission(4_000)) as i128, "{w}");
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT + 10_000 - 12_000) as i128);
    m.m.ledger.check().expect("balanced");
}
