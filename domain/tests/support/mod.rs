//! Test support: a marketplace driven the way the services drive it, with the money invariants
//! checked after every command, and a generic given/when/expect check for any aggregate.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use domain::challenge::ChallengeStatus;
use domain::ctx::{CommissionSchedule, Facts, Role};
use domain::digest::Digest;
use domain::dispute::DisputeStatus;
use domain::funds::{DepositCommand, DepositEvent, PayoutEvent};
use domain::ids::{ChallengeId, DepositId, DisputeId, JobId, PartyId};
use domain::job::{JobCommand, JobEvent, JobStatus, ResultValue, WorkloadSpec, commitment_for};
use domain::ledger::{LedgerAccount, Provider};
use domain::policy::{TaskClass, VerificationPolicy};
use domain::{Actor, Aggregate, Command, CommandCtx, Currency, Event, MarketError, Marketplace, Money, Timestamp};
use uuid::Uuid;

// ---- the cast -----------------------------------------------------------------------------

pub(crate) const T0_SECS: i64 = 1_795_651_200;
/// EUR 100.00 for the client, EUR 10.00 for each worker.
pub(crate) const CLIENT_DEPOSIT: u64 = 10_000;
pub(crate) const WORKER_DEPOSIT: u64 = 1_000;
/// EUR 10.00 per replica; `dscm_verified`: collateral 10 %, slash 30 %, window 24 h.
pub(crate) const REWARD: u64 = 1_000;
pub(crate) const COLLATERAL: u64 = 100;
pub(crate) const SLASHED: u64 = 30;
pub(crate) const WINDOW_SECS: u64 = 86_400;
/// 8 % of a reward, while the client's month is below EUR 10,000.
pub(crate) const COMMISSION: u64 = 80;
pub(crate) const JOB_DEADLINE_SECS: u64 = 2 * 86_400;

pub(crate) const JOB: JobId = JobId(Uuid::from_u128(0x10b));
pub(crate) const CLIENT: PartyId = PartyId(Uuid::from_u128(0xc1));
pub(crate) const OTHER_CLIENT: PartyId = PartyId(Uuid::from_u128(0xc2));
pub(crate) const W1: PartyId = PartyId(Uuid::from_u128(0x71));
pub(crate) const W2: PartyId = PartyId(Uuid::from_u128(0x72));
pub(crate) const W3: PartyId = PartyId(Uuid::from_u128(0x73));
pub(crate) const W4: PartyId = PartyId(Uuid::from_u128(0x74));
pub(crate) const W5: PartyId = PartyId(Uuid::from_u128(0x75));
pub(crate) const W6: PartyId = PartyId(Uuid::from_u128(0x76));
pub(crate) const W7: PartyId = PartyId(Uuid::from_u128(0x77));
pub(crate) const ARBITER: PartyId = PartyId(Uuid::from_u128(0xa1));
pub(crate) const OTHER_ARBITER: PartyId = PartyId(Uuid::from_u128(0xa2));
pub(crate) const FINANCE: PartyId = PartyId(Uuid::from_u128(0xf1));
pub(crate) const CHALLENGE: ChallengeId = ChallengeId(Uuid::from_u128(0xc4a1));

/// Result manifests, by letter.
pub(crate) const A: u8 = 0xa;
pub(crate) const B: u8 = 0xb;
pub(crate) const C: u8 = 0xc;

pub(crate) fn t0() -> Timestamp {
    Timestamp::from_unix_secs(T0_SECS)
}

pub(crate) fn eur(minor_units: u64) -> Money {
    Money { minor_units, currency: Currency::Eur }
}

pub(crate) fn client(party: PartyId) -> Actor {
    Actor { party, role: Role::Client }
}

pub(crate) fn worker(party: PartyId) -> Actor {
    Actor { party, role: Role::Worker }
}

pub(crate) fn arbiter(party: PartyId) -> Actor {
    Actor { party, role: Role::Arbiter }
}

pub(crate) fn finance() -> Actor {
    Actor { party: FINANCE, role: Role::Finance }
}

pub(crate) fn result(n: u8) -> ResultValue {
    ResultValue { digest: Digest::of(&[n]), metric_micros: None }
}

pub(crate) fn salt(worker: PartyId) -> Digest {
    Digest::of(worker.0.as_bytes())
}

pub(crate) fn workload() -> WorkloadSpec {
    WorkloadSpec { name: "md-sim".into(), params: "{}".into(), input_digest: None }
}

// ---- the marketplace under test ------------------------------------------------------------

/// A marketplace, a clock the test moves, and the invariants asserted after every command.
#[derive(Debug)]
pub(crate) struct Market {
    pub(crate) m: Marketplace,
    pub(crate) now: Timestamp,
    deposits: u32,
}

impl Default for Market {
    fn default() -> Self {
        Market { m: Marketplace::new(7), now: t0(), deposits: 0 }
    }
}

impl Market {
    pub(crate) fn advance(&mut self, secs: u64) {
        self.now = self.now.plus_secs(secs);
    }

    pub(crate) fn advance_to(&mut self, at: Timestamp) {
        assert!(at >= self.now, "time does not go back");
        self.now = at;
    }

    /// Run a command with its reactions; a refusal must write nothing. Invariants after.
    pub(crate) fn execute(&mut self, cmd: Command, actor: Actor) -> Result<Vec<Event>, MarketError> {
        let before = self.m.log.len();
        let ledger_before = self.m.ledger.clone();
        let outcome = self.m.execute(cmd, actor, self.now);
        if outcome.is_err() {
            assert_eq!(self.m.log.len(), before, "a refused command wrote events");
            assert_eq!(self.m.ledger, ledger_before, "a refused command moved money");
        }
        self.assert_invariants();
        outcome
    }

    #[track_caller]
    pub(crate) fn ok(&mut self, cmd: Command, actor: Actor) -> Vec<Event> {
        match self.execute(cmd.clone(), actor) {
            Ok(events) => events,
            Err(e) => panic!("refused at {}: {cmd:?} by {actor:?}: {e:?}", self.now),
        }
    }

    #[track_caller]
    pub(crate) fn refused(&mut self, cmd: Command, actor: Actor) -> MarketError {
        match self.execute(cmd.clone(), actor) {
            Ok(events) => panic!("accepted at {}: {cmd:?} by {actor:?}: {events:#?}", self.now),
            Err(e) => e,
        }
    }

    /// Per currency the ledger balances and nothing but clearing is negative; every escrow is
    /// conserved; the platform holds exactly what was captured minus what was paid out.
    #[track_caller]
    pub(crate) fn assert_invariants(&self) {
        if let Err(violation) = self.m.ledger.check() {
            panic!("ledger violated at {}: {violation}", self.now);
        }
        for (job, escrow) in &self.m.escrows {
            assert!(escrow.is_conserved(), "escrow of {job} not conserved: {escrow:?}");
        }
        let mut outside: i128 = 0;
        for event in &self.m.log {
            match event {
                Event::Deposit(_, DepositEvent::DepositCaptured { amount, .. }) if amount.currency == Currency::Eur => {
                    outside += i128::from(amount.minor_units);
                }
                Event::Payout(_, PayoutEvent::PayoutCompleted { amount, .. }) if amount.currency == Currency::Eur => {
                    outside -= i128::from(amount.minor_units);
                }
                _ => {}
            }
        }
        assert_eq!(self.m.ledger.held_by_platform(Currency::Eur), outside, "held by the platform at {}", self.now);
    }

    // ---- money ----

    /// Finance records a captured bank transfer for `party`.
    #[track_caller]
    pub(crate) fn deposit(&mut self, party: PartyId, minor_units: u64) -> DepositId {
        self.deposits += 1;
        let external_ref = format!("bank-transfer-{}", self.deposits);
        let id = DepositId::of(Provider::Manual, &external_ref);
        self.ok(
            Command::Deposit(
                id,
                DepositCommand::RecordCaptured {
                    party,
                    amount: eur(minor_units),
                    provider: Provider::Manual,
                    external_ref,
                },
            ),
            finance(),
        );
        id
    }

    pub(crate) fn balance(&self, account: LedgerAccount) -> i128 {
        self.m.ledger.balance(account, Currency::Eur)
    }

    pub(crate) fn available(&self, party: PartyId) -> i128 {
        self.balance(LedgerAccount::Available { party })
    }

    pub(crate) fn collateral(&self, worker: PartyId) -> i128 {
        self.balance(LedgerAccount::WorkerCollateral { worker })
    }

    pub(crate) fn pending(&self, worker: PartyId) -> i128 {
        self.balance(LedgerAccount::WorkerPending { worker })
    }

    pub(crate) fn fees(&self) -> i128 {
        self.balance(LedgerAccount::PlatformFees)
    }

    pub(crate) fn held_in_escrow(&self, job: JobId) -> i128 {
        self.balance(LedgerAccount::JobEscrow { job })
    }

    // ---- the job ----

    #[track_caller]
    pub(crate) fn post_job(&mut self, job: JobId, policy: VerificationPolicy, task_count: u32) {
        self.ok(
            Command::Job(
                job,
                JobCommand::Post {
                    job,
                    class: TaskClass::DscmVerified,
                    policy,
                    reward_per_replica: eur(REWARD),
                    task_count,
                    workload: workload(),
                    expires_in_secs: JOB_DEADLINE_SECS,
                },
            ),
            client(CLIENT),
        );
    }

    /// The client (with its deposit) posts and funds JOB: `dscm_verified`, one task.
    #[track_caller]
    pub(crate) fn funded_job(&mut self) {
        self.funded_job_of(TaskClass::DscmVerified.defaults(), 1);
    }

    #[track_caller]
    pub(crate) fn funded_job_of(&mut self, policy: VerificationPolicy, task_count: u32) {
        self.post_job(JOB, policy, task_count);
        self.ok(Command::Job(JOB, JobCommand::Fund), client(CLIENT));
    }

    /// `worker` claims a replica; returns the task it got.
    #[track_caller]
    pub(crate) fn claim(&mut self, job: JobId, w: PartyId) -> u32 {
        let events = self.ok(Command::Job(job, JobCommand::ClaimTask { task: None }), worker(w));
        events
            .iter()
            .find_map(|e| match e {
                Event::Job(_, JobEvent::ReplicaClaimed { task, .. }) => Some(*task),
                _ => None,
            })
            .expect("a claim")
    }

    #[track_caller]
    pub(crate) fn commit(&mut self, job: JobId, task: u32, w: PartyId, r: u8) -> Vec<Event> {
        let commitment = commitment_for(job, task, w, &result(r), salt(w));
        self.ok(Command::Job(job, JobCommand::CommitResult { task, commitment }), worker(w))
    }

    #[track_caller]
    pub(crate) fn reveal(&mut self, job: JobId, task: u32, w: PartyId, r: u8) -> Vec<Event> {
        self.ok(Command::Job(job, JobCommand::RevealResult { task, result: result(r), salt: salt(w) }), worker(w))
    }

    /// Each worker claims a replica of the same task and commits its result.
    #[track_caller]
    pub(crate) fn claim_and_commit(&mut self, job: JobId, replicas: &[(PartyId, u8)]) -> u32 {
        let mut task = None;
        for &(w, r) in replicas {
            let t = self.claim(job, w);
            assert!(task.is_none_or(|x| x == t), "the replicas landed on different tasks");
            task = Some(t);
            self.commit(job, t, w, r);
        }
        task.expect("at least one replica")
    }

    /// Each worker claims, computes and commits; then each reveals. Returns the reveals' events.
    #[track_caller]
    pub(crate) fn compute(&mut self, job: JobId, replicas: &[(PartyId, u8)]) -> Vec<Event> {
        let task = self.claim_and_commit(job, replicas);
        let mut events = Vec::new();
        for &(w, r) in replicas {
            events.extend(self.reveal(job, task, w, r));
        }
        events
    }

    pub(crate) fn job_status(&self, job: JobId) -> JobStatus {
        self.m.jobs.get(&job).map_or(JobStatus::None, |j| j.status())
    }

    pub(crate) fn dispute_status(&self, dispute: DisputeId) -> DisputeStatus {
        self.m.disputes.get(&dispute).map_or(DisputeStatus::None, |d| d.status())
    }

    pub(crate) fn challenge_status(&self, challenge: ChallengeId) -> ChallengeStatus {
        self.m.challenges.get(&challenge).map_or(ChallengeStatus::None, |c| c.status())
    }

    /// When JOB's challenge window closes.
    pub(crate) fn window_closes_at(&self, job: JobId) -> Timestamp {
        self.m.jobs[&job].window_closes_at.expect("an open challenge window")
    }

    /// The worker's (reputation score, consecutive valid results).
    pub(crate) fn track_record(&self, w: PartyId) -> (i64, u32) {
        self.m.workers.get(&w).map_or((0, 0), |r| (r.score, r.consecutive_valid))
    }
}

/// The event types of a batch, in order (for asserting what a command caused).
pub(crate) fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::event_type).collect()
}

/// The first event matching `pick`.
#[track_caller]
pub(crate) fn find<T>(events: &[Event], pick: impl FnMut(&Event) -> Option<T>) -> T {
    events.iter().find_map(pick).unwrap_or_else(|| panic!("not among {:?}", types(events)))
}

// ---- a generic given/when/expect check for one aggregate ----------------------------------

/// Facts with settable answers: one available balance for everyone.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub(crate) available: u64,
    pub(crate) schedule: CommissionSchedule,
}

impl World {
    pub(crate) fn with_balance(available: u64) -> World {
        World { available, ..World::default() }
    }
}

impl Facts for World {
    fn available(&self, _: PartyId, _: Currency) -> u64 {
        self.available
    }
    fn consecutive_valid(&self, _: PartyId) -> u32 {
        0
    }
    fn client_month_volume(&self, _: PartyId, _: Currency, _: i64) -> u64 {
        0
    }
    fn random_u64(&self) -> u64 {
        0
    }
    fn commission(&self) -> &CommissionSchedule {
        &self.schedule
    }
}

/// One row of an aggregate's table.
#[derive(Debug)]
pub(crate) struct Row<A: Aggregate> {
    pub(crate) name: &'static str,
    pub(crate) given: Vec<A::Event>,
    pub(crate) when: A::Command,
    pub(crate) actor: Actor,
    pub(crate) now: Timestamp,
    pub(crate) world: World,
    pub(crate) expect: Result<Vec<A::Event>, A::Error>,
}

pub(crate) fn row<A: Aggregate>(
    name: &'static str,
    given: Vec<A::Event>,
    when: A::Command,
    actor: Actor,
    now: Timestamp,
    expect: Result<Vec<A::Event>, A::Error>,
) -> Row<A> {
    Row { name, given, when, actor, now, world: World::with_balance(u64::MAX), expect }
}

impl<A: Aggregate> Row<A> {
    pub(crate) fn in_world(self, world: World) -> Row<A> {
        Row { world, ..self }
    }
}

/// Given a history, when `when` is handled by `actor` at `now`, expect exactly `expect`.
#[track_caller]
pub(crate) fn check<A: Aggregate>(
    world: &World,
    given: &[A::Event],
    when: A::Command,
    actor: Actor,
    now: Timestamp,
    expect: Result<Vec<A::Event>, A::Error>,
) -> Result<(), String> {
    let state = A::from_events(given);
    let got = state.handle(when.clone(), &CommandCtx { now, actor, facts: world });
    if got == expect {
        Ok(())
    } else {
        Err(format!("when {when:?} by {actor:?} at {now}\n  got:      {got:?}\n  expected: {expect:?}"))
    }
}

/// Run every row; report all failing rows at once.
#[track_caller]
pub(crate) fn check_table<A: Aggregate>(rows: Vec<Row<A>>) {
    let failures: Vec<String> = rows
        .into_iter()
        .filter_map(|r| {
            check::<A>(&r.world, &r.given, r.when, r.actor, r.now, r.expect)
                .err()
                .map(|e| format!("row {:?}: {e}", r.name))
        })
        .collect();
    assert!(failures.is_empty(), "{} row(s) failed:\n{}", failures.len(), failures.join("\n"));
}
