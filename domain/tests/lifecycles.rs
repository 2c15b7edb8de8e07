//! The lifecycles of the brief, end to end: each aggregate's table of transitions, then whole
//! flows through `Marketplace::execute` (a command and its reactions, atomically), with the
//! ledger checked after every command and exact balances at the end.

mod support;

use domain::challenge::{Challenge, ChallengeCommand, ChallengeError, ChallengeEvent, ChallengeStatus};
use domain::dispute::{
    APPEAL_SECS, Dispute, DisputeCommand, DisputeError, DisputeEvent, DisputeOutcome, DisputeReason, DisputeStatus,
    REVIEW_SECS_DEFAULT,
};
use domain::escrow::EscrowError;
use domain::funds::{
    Deposit, DepositCommand, DepositError, DepositEvent, Payout, PayoutCommand, PayoutError, PayoutEvent,
};
use domain::ids::{DepositId, DisputeId, JobId, PayoutId, name_uuid};
use domain::job::{
    CLAIM_TTL_SECS, JobCommand, JobError, JobEvent, JobStatus, REASSIGN_COOLDOWN_SECS, REVEAL_TTL_SECS,
    ReexecutionVerdict,
};
use domain::ledger::{LedgerAccount, Provider};
use domain::policy::TaskClass;
use domain::worker::{Outcome, Worker, WorkerCommand, WorkerError, WorkerEvent};
use domain::{Actor, Command, Currency, Event, MarketError, Marketplace, Money, Role};
use support::*;
use uuid::Uuid;

// =========================================================================================
// Challenge
// =========================================================================================

fn challenge_opened(challenger: domain::ids::PartyId) -> ChallengeEvent {
    ChallengeEvent::ChallengeOpened {
        challenge: CHALLENGE,
        job: JOB,
        task: 0,
        challenger,
        reason: "energy drifts by 3 %".into(),
        bond: eur(REWARD),
    }
}

fn open_challenge(reason: &str, bond: Money) -> ChallengeCommand {
    ChallengeCommand::Open { challenge: CHALLENGE, job: JOB, task: 0, reason: reason.into(), bond }
}

#[test]
fn a_challenge_is_opened_with_a_bond_and_resolved_by_the_re_execution_verdict() {
    use ChallengeError as E;
    let now = t0();
    let resolve = |verdict| ChallengeCommand::Resolve { verdict };
    let opened = || vec![challenge_opened(CLIENT)];
    let escalation = DisputeId(name_uuid(&["dispute", "challenge", &CHALLENGE.to_string()]));
    check_table::<Challenge>(vec![
        row(
            "the client challenges with a bond",
            vec![],
            open_challenge(" energy drifts by 3 %\n", eur(REWARD)),
            client(CLIENT),
            now,
            Ok(opened()),
        ),
        row(
            "a worker may challenge",
            vec![],
            open_challenge("energy drifts by 3 %", eur(REWARD)),
            worker(W4),
            now,
            Ok(vec![challenge_opened(W4)]),
        ),
        row(
            "an arbiter does not challenge",
            vec![],
            open_challenge("x", eur(REWARD)),
            arbiter(ARBITER),
            now,
            Err(E::NotAllowedToChallenge),
        ),
        row(
            "finance does not challenge",
            vec![],
            open_challenge("x", eur(REWARD)),
            finance(),
            now,
            Err(E::NotAllowedToChallenge),
        ),
        row(
            "the platform does not challenge",
            vec![],
            open_challenge("x", eur(REWARD)),
            Actor::SYSTEM,
            now,
            Err(E::NotAllowedToChallenge),
        ),
        row(
            "a blank reason is refused",
            vec![],
            open_challenge("  \n", eur(REWARD)),
            client(CLIENT),
            now,
            Err(E::Reason),
        ),
        row(
            "a reason over 1000 characters is refused",
            vec![],
            open_challenge(&"é".repeat(1_001), eur(REWARD)),
            client(CLIENT),
            now,
            Err(E::Reason),
        ),
        row(
            "1000 characters are enough",
            vec![],
            open_challenge(&"é".repeat(1_000), eur(REWARD)),
            client(CLIENT),
            now,
            Ok(vec![ChallengeEvent::ChallengeOpened {
                challenge: CHALLENGE,
                job: JOB,
                task: 0,
                challenger: CLIENT,
                reason: "é".repeat(1_000),
                bond: eur(REWARD),
            }]),
        ),
        row("a zero bond is refused", vec![], open_challenge("x", eur(0)), client(CLIENT), now, Err(E::ZeroBond)),
        row(
            "a challenger who cannot afford the bond is refused",
            vec![],
            open_challenge("x", eur(REWARD)),
            client(CLIENT),
            now,
            Err(E::InsufficientFunds { available: eur(REWARD - 1), bond: eur(REWARD) }),
        )
        .in_world(World::with_balance(REWARD - 1)),
        row(
            "a challenge is opened once",
            opened(),
            open_challenge("again", eur(REWARD)),
            client(CLIENT),
            now,
            Err(E::AlreadyOpened),
        ),
        row(
            "upheld: the bond goes back",
            opened(),
            resolve(ReexecutionVerdict::Upheld),
            Actor::SYSTEM,
            now,
            Ok(vec![ChallengeEvent::ChallengeUpheld {
                job: JOB,
                task: 0,
                challenger: CLIENT,
                bond_returned: eur(REWARD),
            }]),
        ),
        row(
            "rejected: the bond is forfeited",
            opened(),
            resolve(ReexecutionVerdict::Rejected),
            Actor::SYSTEM,
            now,
            Ok(vec![ChallengeEvent::ChallengeRejected {
                job: JOB,
                task: 0,
                challenger: CLIENT,
                bond_forfeited: eur(REWARD),
            }]),
        ),
        row(
            "inconclusive: the bond goes back and a dispute with a derived id opens",
            opened(),
            resolve(ReexecutionVerdict::Inconclusive),
            Actor::SYSTEM,
            now,
            Ok(vec![ChallengeEvent::ChallengeEscalated {
                job: JOB,
                task: 0,
                challenger: CLIENT,
                dispute: escalation,
                bond_returned: eur(REWARD),
            }]),
        ),
        row(
            "only the platform resolves (by re-execution)",
            opened(),
            resolve(ReexecutionVerdict::Upheld),
            client(CLIENT),
            now,
            Err(E::NotTheSystem),
        ),
        row(
            "an arbiter does not resolve a challenge",
            opened(),
            resolve(ReexecutionVerdict::Upheld),
            arbiter(ARBITER),
            now,
            Err(E::NotTheSystem),
        ),
        row(
            "an unopened challenge cannot be resolved",
            vec![],
            resolve(ReexecutionVerdict::Upheld),
            Actor::SYSTEM,
            now,
            Err(E::NotFound),
        ),
        row(
            "a challenge is resolved once",
            vec![
                challenge_opened(CLIENT),
                ChallengeEvent::ChallengeRejected {
                    job: JOB,
                    task: 0,
                    challenger: CLIENT,
                    bond_forfeited: eur(REWARD),
                },
            ],
            resolve(ReexecutionVerdict::Upheld),
            Actor::SYSTEM,
            now,
            Err(E::AlreadyResolved),
        ),
    ]);
}

// =========================================================================================
// Dispute
// =========================================================================================

const DISPUTE: DisputeId = DisputeId(Uuid::from_u128(0xd1));
/// When the dispute's story happens, in seconds after T0.
const REVIEWED_AT: u64 = 10;
const RESOLVED_AT: u64 = 100;
const APPEALED_AT: u64 = 200;

fn at(secs: u64) -> domain::Timestamp {
    t0().plus_secs(secs)
}

fn open_dispute(review_secs: Option<u64>) -> DisputeCommand {
    DisputeCommand::Open {
        dispute: DISPUTE,
        job: JOB,
        task: 0,
        client: CLIENT,
        workers: vec![W1, W2, W3],
        reason: DisputeReason::NoQuorum,
        review_secs,
    }
}

fn dispute_opened(review_secs: u64) -> DisputeEvent {
    DisputeEvent::DisputeOpened {
        dispute: DISPUTE,
        job: JOB,
        task: 0,
        client: CLIENT,
        workers: vec![W1, W2, W3],
        reason: DisputeReason::NoQuorum,
        review_deadline: at(review_secs),
    }
}

fn resolved(outcome: DisputeOutcome, by: Option<domain::ids::PartyId>, at_secs: u64) -> DisputeEvent {
    DisputeEvent::DisputeResolved { outcome, by, appeal_deadline: at(at_secs + APPEAL_SECS) }
}

fn closed(outcome: DisputeOutcome) -> DisputeEvent {
    DisputeEvent::DisputeClosed { job: JOB, task: 0, outcome }
}

fn dispute_story(steps: usize) -> Vec<DisputeEvent> {
    let all = vec![
        dispute_opened(REVIEW_SECS_DEFAULT),
        DisputeEvent::ReviewStarted { arbiter: ARBITER },
        resolved(DisputeOutcome::Payout, Some(ARBITER), RESOLVED_AT),
        DisputeEvent::DisputeAppealed {
            by: CLIENT,
            reason: "they all disagreed".into(),
            decision_deadline: at(APPEALED_AT + APPEAL_SECS),
        },
    ];
    all.into_iter().take(steps).collect()
}

#[test]
fn a_dispute_goes_opened_under_review_resolved_appealed_closed_with_deadlines() {
    use DisputeCommand as Cmd;
    use DisputeError as E;
    let (opened, reviewing, decided, appealed) =
        (dispute_story(1), dispute_story(2), dispute_story(3), dispute_story(4));
    let wrong = |status, expected| Err(E::WrongStatus { status, expected });
    let resolve = |outcome| Cmd::Resolve { outcome };
    let appeal = |reason: &str| Cmd::Appeal { reason: reason.into() };
    let review_deadline = at(REVIEW_SECS_DEFAULT);
    let appeal_deadline = at(RESOLVED_AT + APPEAL_SECS);
    let decision_deadline = at(APPEALED_AT + APPEAL_SECS);
    let system = Actor::SYSTEM;
    check_table::<Dispute>(vec![
        // Opening.
        row(
            "the platform opens a dispute; review within 3600 s by default",
            vec![],
            open_dispute(None),
            system,
            t0(),
            Ok(vec![dispute_opened(3_600)]),
        ),
        row(
            "a review time of 300 s is allowed",
            vec![],
            open_dispute(Some(300)),
            system,
            t0(),
            Ok(vec![dispute_opened(300)]),
        ),
        row(
            "a review time under 300 s is refused",
            vec![],
            open_dispute(Some(299)),
            system,
            t0(),
            Err(E::ReviewTime(299)),
        ),
        row(
            "a review time over 30 days is refused",
            vec![],
            open_dispute(Some(30 * 86_400 + 1)),
            system,
            t0(),
            Err(E::ReviewTime(30 * 86_400 + 1)),
        ),
        row("a client does not open disputes", vec![], open_dispute(None), client(CLIENT), t0(), Err(E::NotTheSystem)),
        row("a dispute opens once", opened.clone(), open_dispute(None), system, t0(), Err(E::AlreadyOpened)),
        row(
            "nothing happens to a dispute never opened",
            vec![],
            Cmd::StartReview,
            arbiter(ARBITER),
            t0(),
            Err(E::NotFound),
        ),
        // Review.
        row(
            "an arbiter starts the review",
            opened.clone(),
            Cmd::StartReview,
            arbiter(ARBITER),
            at(REVIEWED_AT),
            Ok(vec![DisputeEvent::ReviewStarted { arbiter: ARBITER }]),
        ),
        row(
            "a client does not review",
            opened.clone(),
            Cmd::StartReview,
            client(CLIENT),
            at(REVIEWED_AT),
            Err(E::NotAnArbiter),
        ),
        row(
            "a worker does not review",
            opened.clone(),
            Cmd::StartReview,
            worker(W1),
            at(REVIEWED_AT),
            Err(E::NotAnArbiter),
        ),
        row(
            "no review from the review deadline on",
            opened.clone(),
            Cmd::StartReview,
            arbiter(ARBITER),
            review_deadline,
            Err(E::DeadlinePassed { deadline: review_deadline }),
        ),
        row(
            "a review starts once",
            reviewing.clone(),
            Cmd::StartReview,
            arbiter(OTHER_ARBITER),
            at(50),
            wrong(DisputeStatus::UnderReview, "an opened dispute"),
        ),
        // Resolution.
        row(
            "the reviewing arbiter resolves; the appeal window is 3600 s",
            reviewing.clone(),
            resolve(DisputeOutcome::Payout),
            arbiter(ARBITER),
            at(RESOLVED_AT),
            Ok(vec![resolved(DisputeOutcome::Payout, Some(ARBITER), RESOLVED_AT)]),
        ),
        row(
            "only the reviewing arbiter resolves",
            reviewing.clone(),
            resolve(DisputeOutcome::Payout),
            arbiter(OTHER_ARBITER),
            at(RESOLVED_AT),
            Err(E::NotTheReviewingArbiter),
        ),
        row(
            "a worker cannot resolve",
            reviewing.clone(),
            resolve(DisputeOutcome::Payout),
            worker(W1),
            at(RESOLVED_AT),
            Err(E::NotAnArbiter),
        ),
        row(
            "the client cannot resolve",
            reviewing.clone(),
            resolve(DisputeOutcome::Refund),
            client(CLIENT),
            at(RESOLVED_AT),
            Err(E::NotAnArbiter),
        ),
        row(
            "no resolution without a review",
            opened.clone(),
            resolve(DisputeOutcome::Payout),
            arbiter(ARBITER),
            at(RESOLVED_AT),
            wrong(DisputeStatus::Opened, "a dispute under review"),
        ),
        row(
            "a split of 0 % is a payout, not a split",
            reviewing.clone(),
            resolve(DisputeOutcome::Split { client_pct: 0 }),
            arbiter(ARBITER),
            at(RESOLVED_AT),
            Err(E::SplitPct),
        ),
        row(
            "a split of 100 % is a refund, not a split",
            reviewing.clone(),
            resolve(DisputeOutcome::Split { client_pct: 100 }),
            arbiter(ARBITER),
            at(RESOLVED_AT),
            Err(E::SplitPct),
        ),
        row(
            "a split of 1 % is a split",
            reviewing.clone(),
            resolve(DisputeOutcome::Split { client_pct: 1 }),
            arbiter(ARBITER),
            at(RESOLVED_AT),
            Ok(vec![resolved(DisputeOutcome::Split { client_pct: 1 }, Some(ARBITER), RESOLVED_AT)]),
        ),
        row(
            "no resolution from the review deadline on",
            reviewing.clone(),
            resolve(DisputeOutcome::Payout),
            arbiter(ARBITER),
            review_deadline,
            Err(E::DeadlinePassed { deadline: review_deadline }),
        ),
        row(
            "a dispute is resolved once",
            decided.clone(),
            resolve(DisputeOutcome::Refund),
            arbiter(ARBITER),
            at(150),
            wrong(DisputeStatus::Resolved, "a dispute under review"),
        ),
        // Appeal.
        row(
            "the client appeals within the hour",
            decided.clone(),
            appeal(" they all disagreed "),
            client(CLIENT),
            at(APPEALED_AT),
            Ok(vec![dispute_story(4)[3].clone()]),
        ),
        row(
            "a worker of the task may appeal",
            decided.clone(),
            appeal("I was right"),
            worker(W2),
            at(APPEALED_AT),
            Ok(vec![DisputeEvent::DisputeAppealed { by: W2, reason: "I was right".into(), decision_deadline }]),
        ),
        row(
            "a worker of another task may not",
            decided.clone(),
            appeal("me too"),
            worker(W4),
            at(APPEALED_AT),
            Err(E::NotAParty),
        ),
        row(
            "another client may not",
            decided.clone(),
            appeal("me too"),
            client(OTHER_CLIENT),
            at(APPEALED_AT),
            Err(E::NotAParty),
        ),
        row(
            "an arbiter may not",
            decided.clone(),
            appeal("me too"),
            arbiter(OTHER_ARBITER),
            at(APPEALED_AT),
            Err(E::NotAParty),
        ),
        row(
            "a worker of the task acting as a client may not",
            decided.clone(),
            appeal("me too"),
            client(W1),
            at(APPEALED_AT),
            Err(E::NotAParty),
        ),
        row(
            "an appeal needs a reason",
            decided.clone(),
            appeal("   "),
            client(CLIENT),
            at(APPEALED_AT),
            Err(E::Reason),
        ),
        row(
            "no appeal from the appeal deadline on",
            decided.clone(),
            appeal("late"),
            client(CLIENT),
            appeal_deadline,
            Err(E::DeadlinePassed { deadline: appeal_deadline }),
        ),
        row(
            "no appeal before a resolution",
            reviewing.clone(),
            appeal("early"),
            client(CLIENT),
            at(50),
            wrong(DisputeStatus::UnderReview, "a resolved dispute"),
        ),
        row(
            "one appeal only",
            appealed.clone(),
            appeal("again"),
            worker(W1),
            at(300),
            wrong(DisputeStatus::Appealed, "a resolved dispute"),
        ),
        // Appeal decision.
        row(
            "a different arbiter decides the appeal and closes the dispute",
            appealed.clone(),
            Cmd::DecideAppeal { outcome: DisputeOutcome::Refund },
            arbiter(OTHER_ARBITER),
            at(1_000),
            Ok(vec![closed(DisputeOutcome::Refund)]),
        ),
        row(
            "the first arbiter does not decide the appeal",
            appealed.clone(),
            Cmd::DecideAppeal { outcome: DisputeOutcome::Refund },
            arbiter(ARBITER),
            at(1_000),
            Err(E::SameArbiterOnAppeal),
        ),
        row(
            "a client does not decide its own appeal",
            appealed.clone(),
            Cmd::DecideAppeal { outcome: DisputeOutcome::Refund },
            client(CLIENT),
            at(1_000),
            Err(E::NotAnArbiter),
        ),
        row(
            "no decision from the decision deadline on",
            appealed.clone(),
            Cmd::DecideAppeal { outcome: DisputeOutcome::Refund },
            arbiter(OTHER_ARBITER),
            decision_deadline,
            Err(E::DeadlinePassed { deadline: decision_deadline }),
        ),
        row(
            "no decision without an appeal",
            decided.clone(),
            Cmd::DecideAppeal { outcome: DisputeOutcome::Refund },
            arbiter(OTHER_ARBITER),
            at(1_000),
            wrong(DisputeStatus::Resolved, "an appealed dispute"),
        ),
        row(
            "an appeal decision needs a valid split",
            appealed.clone(),
            Cmd::DecideAppeal { outcome: DisputeOutcome::Split { client_pct: 100 } },
            arbiter(OTHER_ARBITER),
            at(1_000),
            Err(E::SplitPct),
        ),
        // The review deadline passing.
        row(
            "the review deadline passing resolves as a refund",
            opened.clone(),
            Cmd::ExpireReview,
            system,
            review_deadline,
            Ok(vec![resolved(DisputeOutcome::Refund, None, REVIEW_SECS_DEFAULT)]),
        ),
        row(
            "…also when a review had started",
            reviewing.clone(),
            Cmd::ExpireReview,
            system,
            review_deadline,
            Ok(vec![resolved(DisputeOutcome::Refund, None, REVIEW_SECS_DEFAULT)]),
        ),
        row(
            "not before the review deadline",
            opened.clone(),
            Cmd::ExpireReview,
            system,
            at(REVIEW_SECS_DEFAULT - 1),
            Err(E::DeadlineNotReached { deadline: review_deadline }),
        ),
        row(
            "only the platform expires a review",
            opened.clone(),
            Cmd::ExpireReview,
            arbiter(ARBITER),
            review_deadline,
            Err(E::NotTheSystem),
        ),
        row(
            "a resolved dispute's review does not expire",
            decided.clone(),
            Cmd::ExpireReview,
            system,
            review_deadline,
            wrong(DisputeStatus::Resolved, "a dispute awaiting review"),
        ),
        row(
            "an appeal of a deadline refund may be decided by any arbiter",
            vec![
                dispute_opened(REVIEW_SECS_DEFAULT),
                resolved(DisputeOutcome::Refund, None, REVIEW_SECS_DEFAULT),
                DisputeEvent::DisputeAppealed {
                    by: W1,
                    reason: "we worked".into(),
                    decision_deadline: at(REVIEW_SECS_DEFAULT + 10 + APPEAL_SECS),
                },
            ],
            Cmd::DecideAppeal { outcome: DisputeOutcome::Payout },
            arbiter(ARBITER),
            at(REVIEW_SECS_DEFAULT + 20),
            Ok(vec![closed(DisputeOutcome::Payout)]),
        ),
        // Closing.
        row(
            "closing waits for the appeal deadline",
            decided.clone(),
            Cmd::Close,
            system,
            at(RESOLVED_AT + APPEAL_SECS - 1),
            Err(E::DeadlineNotReached { deadline: appeal_deadline }),
        ),
        row(
            "at the appeal deadline the resolution stands",
            decided.clone(),
            Cmd::Close,
            system,
            appeal_deadline,
            Ok(vec![closed(DisputeOutcome::Payout)]),
        ),
        row(
            "an undecided appeal waits for its decision deadline",
            appealed.clone(),
            Cmd::Close,
            system,
            appeal_deadline,
            Err(E::DeadlineNotReached { deadline: decision_deadline }),
        ),
        row(
            "an undecided appeal changes nothing",
            appealed.clone(),
            Cmd::Close,
            system,
            decision_deadline,
            Ok(vec![closed(DisputeOutcome::Payout)]),
        ),
        row(
            "only the platform closes",
            decided.clone(),
            Cmd::Close,
            arbiter(ARBITER),
            appeal_deadline,
            Err(E::NotTheSystem),
        ),
        row(
            "an unresolved dispute does not close",
            reviewing.clone(),
            Cmd::Close,
            system,
            at(10_000),
            wrong(DisputeStatus::UnderReview, "a resolved or appealed dispute"),
        ),
        row(
            "a closed dispute stays closed",
            [decided.clone(), vec![closed(DisputeOutcome::Payout)]].concat(),
            Cmd::Close,
            system,
            at(10_000),
            wrong(DisputeStatus::Closed, "a resolved or appealed dispute"),
        ),
    ]);
}

// =========================================================================================
// Worker, Deposit, Payout
// =========================================================================================

#[test]
fn a_workers_reputation_follows_the_seeds_deltas_and_counts_consecutive_valid_results() {
    let record = |outcome| WorkerCommand::RecordOutcome { job: JOB, task: 0, outcome };
    let changed = |outcome, delta, score, consecutive_valid| {
        Ok(vec![WorkerEvent::ReputationChanged { job: JOB, task: 0, outcome, delta, score, consecutive_valid }])
    };
    // Score 4, two consecutive valid results.
    let two_valid = || {
        vec![
            WorkerEvent::ReputationChanged {
                job: JOB,
                task: 0,
                outcome: Outcome::Accepted,
                delta: 2,
                score: 2,
                consecutive_valid: 1,
            },
            WorkerEvent::ReputationChanged {
                job: JOB,
                task: 1,
                outcome: Outcome::Accepted,
                delta: 2,
                score: 4,
                consecutive_valid: 2,
            },
        ]
    };
    let s = Actor::SYSTEM;
    let now = t0();
    check_table::<Worker>(vec![
        row(
            "a first accepted result: +2, one valid",
            vec![],
            record(Outcome::Accepted),
            s,
            now,
            changed(Outcome::Accepted, 2, 2, 1),
        ),
        row(
            "accepted again: the streak grows",
            two_valid(),
            record(Outcome::Accepted),
            s,
            now,
            changed(Outcome::Accepted, 2, 6, 3),
        ),
        row(
            "outvoted: −2, the streak ends",
            two_valid(),
            record(Outcome::Outvoted),
            s,
            now,
            changed(Outcome::Outvoted, -2, 2, 0),
        ),
        row(
            "failed verification: −5",
            two_valid(),
            record(Outcome::FailedVerification),
            s,
            now,
            changed(Outcome::FailedVerification, -5, -1, 0),
        ),
        row("disputed: −3", two_valid(), record(Outcome::Disputed), s, now, changed(Outcome::Disputed, -3, 1, 0)),
        row(
            "a challenge rejected: +2, the streak stands",
            two_valid(),
            record(Outcome::ChallengeRejected),
            s,
            now,
            changed(Outcome::ChallengeRejected, 2, 6, 2),
        ),
        row(
            "a challenge upheld: −4, the streak ends",
            two_valid(),
            record(Outcome::ChallengeUpheld),
            s,
            now,
            changed(Outcome::ChallengeUpheld, -4, 0, 0),
        ),
        row(
            "only the platform records outcomes",
            vec![],
            record(Outcome::Accepted),
            worker(W1),
            now,
            Err(WorkerError::NotTheSystem),
        ),
        row(
            "an arbiter does not record outcomes",
            vec![],
            record(Outcome::Disputed),
            arbiter(ARBITER),
            now,
            Err(WorkerError::NotTheSystem),
        ),
    ]);
}

#[test]
fn a_captured_deposit_is_recorded_once_by_finance() {
    use DepositError as E;
    let capture = |amount, external_ref: &str| DepositCommand::RecordCaptured {
        party: CLIENT,
        amount: eur(amount),
        provider: Provider::Stripe,
        external_ref: external_ref.into(),
    };
    let captured = |amount| DepositEvent::DepositCaptured {
        party: CLIENT,
        amount: eur(amount),
        provider: Provider::Stripe,
        external_ref: "pi_1".into(),
    };
    let now = t0();
    check_table::<Deposit>(vec![
        row("finance records a capture", vec![], capture(5_000, "pi_1"), finance(), now, Ok(vec![captured(5_000)])),
        row(
            "an admin may too",
            vec![],
            capture(5_000, "pi_1"),
            Actor { party: FINANCE, role: Role::Admin },
            now,
            Ok(vec![captured(5_000)]),
        ),
        row(
            "and the platform's webhook handler",
            vec![],
            capture(5_000, "pi_1"),
            Actor::SYSTEM,
            now,
            Ok(vec![captured(5_000)]),
        ),
        row("a client cannot credit itself", vec![], capture(5_000, "pi_1"), client(CLIENT), now, Err(E::NotFinance)),
        row("a worker cannot either", vec![], capture(5_000, "pi_1"), worker(W1), now, Err(E::NotFinance)),
        row("a zero capture is refused", vec![], capture(0, "pi_1"), finance(), now, Err(E::ZeroAmount)),
        row("an empty reference is refused", vec![], capture(5_000, ""), finance(), now, Err(E::ExternalRef)),
        row(
            "a reference over 255 bytes is refused",
            vec![],
            capture(5_000, &"r".repeat(256)),
            finance(),
            now,
            Err(E::ExternalRef),
        ),
        row(
            "a reference with a control character is refused",
            vec![],
            capture(5_000, "pi\n1"),
            finance(),
            now,
            Err(E::ExternalRef),
        ),
        row(
            "the same capture again changes nothing",
            vec![captured(5_000)],
            capture(5_000, "pi_1"),
            finance(),
            now,
            Ok(vec![]),
        ),
        row(
            "another capture under the same reference is refused",
            vec![captured(5_000)],
            capture(6_000, "pi_1"),
            finance(),
            now,
            Err(E::ReferenceReused { external_ref: "pi_1".into() }),
        ),
    ]);
}

#[test]
fn a_payout_takes_available_money_into_flight_until_it_completes_or_fails() {
    use PayoutError as E;
    let request = |amount| PayoutCommand::Request { amount: eur(amount), provider: Provider::Stripe };
    let requested = || vec![PayoutEvent::PayoutRequested { party: W1, amount: eur(900), provider: Provider::Stripe }];
    let complete = || PayoutCommand::Complete { provider_ref: "po_1".into() };
    let fail = || PayoutCommand::Fail { reason: "account closed".into() };
    let now = t0();
    check_table::<Payout>(vec![
        row("a worker withdraws what it has", vec![], request(900), worker(W1), now, Ok(requested()))
            .in_world(World::with_balance(900)),
        row(
            "a client may withdraw too",
            vec![],
            request(900),
            client(CLIENT),
            now,
            Ok(vec![PayoutEvent::PayoutRequested { party: CLIENT, amount: eur(900), provider: Provider::Stripe }]),
        )
        .in_world(World::with_balance(900)),
        row(
            "not more than it has",
            vec![],
            request(901),
            worker(W1),
            now,
            Err(E::InsufficientFunds { available: eur(900), requested: eur(901) }),
        )
        .in_world(World::with_balance(900)),
        row("not nothing", vec![], request(0), worker(W1), now, Err(E::ZeroAmount)),
        row("finance does not withdraw for itself", vec![], request(900), finance(), now, Err(E::NotAllowed)),
        row("an arbiter does not withdraw", vec![], request(900), arbiter(ARBITER), now, Err(E::NotAllowed)),
        row("a payout is requested once", requested(), request(900), worker(W1), now, Err(E::AlreadyRequested)),
        row(
            "finance confirms it left",
            requested(),
            complete(),
            finance(),
            now,
            Ok(vec![PayoutEvent::PayoutCompleted {
                party: W1,
                amount: eur(900),
                provider: Provider::Stripe,
                provider_ref: "po_1".into(),
            }]),
        ),
        row(
            "the platform reports a failure; the money comes back",
            requested(),
            fail(),
            Actor::SYSTEM,
            now,
            Ok(vec![PayoutEvent::PayoutFailed { party: W1, amount: eur(900), reason: "account closed".into() }]),
        ),
        row("the worker does not confirm its own payout", requested(), complete(), worker(W1), now, Err(E::NotFinance)),
        row("no confirmation without a request", vec![], complete(), finance(), now, Err(E::NotFound)),
        row(
            "a completed payout is final",
            [
                requested(),
                vec![PayoutEvent::PayoutCompleted {
                    party: W1,
                    amount: eur(900),
                    provider: Provider::Stripe,
                    provider_ref: "po_1".into(),
                }],
            ]
            .concat(),
            fail(),
            finance(),
            now,
            Err(E::AlreadyFinished("completed")),
        ),
        row(
            "a failed payout is final",
            [requested(), vec![PayoutEvent::PayoutFailed { party: W1, amount: eur(900), reason: "x".into() }]].concat(),
            complete(),
            finance(),
            now,
            Err(E::AlreadyFinished("failed")),
        ),
    ]);
}

// =========================================================================================
// Whole flows through the marketplace
// =========================================================================================

/// The client and workers have deposited their money.
fn market_with(workers: &[domain::ids::PartyId]) -> Market {
    let mut m = Market::default();
    m.deposit(CLIENT, CLIENT_DEPOSIT);
    for &w in workers {
        m.deposit(w, WORKER_DEPOSIT);
    }
    m
}

/// What a worker has after a settled job that paid it one reward.
const PAID_WORKER: i128 = (WORKER_DEPOSIT + REWARD - COMMISSION) as i128;

fn job_err(e: MarketError) -> JobError {
    match e {
        MarketError::Job(e) => e,
        other => panic!("expected a job error, got {other:?}"),
    }
}

fn dispute_err(e: MarketError) -> DisputeError {
    match e {
        MarketError::Dispute(e) => e,
        other => panic!("expected a dispute error, got {other:?}"),
    }
}

fn no_quorum_dispute(job: JobId, task: u32) -> DisputeId {
    DisputeId(name_uuid(&["dispute", "no_quorum", &job.to_string(), &task.to_string()]))
}

#[test]
fn a_job_runs_from_posting_to_settlement_and_pays_its_workers() {
    let mut m = market_with(&[W1, W2, W3]);
    m.deposit(W7, 50); // too little for the collateral

    m.post_job(JOB, TaskClass::DscmVerified.defaults(), 1);
    assert_eq!(m.job_status(JOB), JobStatus::Posted);
    assert!(matches!(
        m.refused(Command::Job(JOB, JobCommand::Fund), client(OTHER_CLIENT)),
        MarketError::Job(JobError::NotTheClient)
    ));
    m.ok(Command::Job(JOB, JobCommand::Fund), client(CLIENT));
    assert_eq!(m.job_status(JOB), JobStatus::Open);
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128);
    assert_eq!(m.held_in_escrow(JOB), (3 * REWARD) as i128);

    // A worker who cannot put up the collateral gets no claim at all.
    let e = m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(W7));
    assert!(matches!(e, MarketError::Escrow(EscrowError::InsufficientFunds { .. })), "{e:?}");

    let task = m.claim_and_commit(JOB, &[(W1, A), (W2, A)]);
    assert_eq!(m.job_status(JOB), JobStatus::Running);
    for w in [W1, W2] {
        assert_eq!((m.available(w), m.collateral(w)), ((WORKER_DEPOSIT - COLLATERAL) as i128, COLLATERAL as i128));
    }
    // Nobody reveals before everyone has committed.
    let e =
        m.refused(Command::Job(JOB, JobCommand::RevealResult { task, result: result(A), salt: salt(W1) }), worker(W1));
    assert_eq!(job_err(e), JobError::RevealPhaseNotStarted);
    m.claim_and_commit(JOB, &[(W3, A)]);
    assert_eq!(m.job_status(JOB), JobStatus::Verifying);

    m.advance(60);
    m.reveal(JOB, task, W1, A);
    m.reveal(JOB, task, W2, A);
    let last = m.reveal(JOB, task, W3, A);
    assert_eq!(
        types(&last),
        [
            "ResultRevealed",
            "TaskVerified",
            "ChallengeWindowOpened",
            "WorkerPaymentPending",
            "WorkerPaymentPending",
            "WorkerPaymentPending",
            "ReputationChanged",
            "ReputationChanged",
            "ReputationChanged",
            "ReleaseScheduled",
        ]
    );
    assert_eq!(m.job_status(JOB), JobStatus::ChallengeWindow);
    for w in [W1, W2, W3] {
        assert_eq!(m.pending(w), REWARD as i128);
        assert_eq!(m.track_record(w), (2, 1));
    }

    // The window closes only at closes_at, and only the platform closes it.
    let closes_at = m.window_closes_at(JOB);
    assert_eq!(closes_at, m.now.plus_secs(WINDOW_SECS));
    m.advance(WINDOW_SECS - 1);
    assert_eq!(
        job_err(m.refused(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM)),
        JobError::WindowStillOpen { closes_at }
    );
    m.advance(1);
    assert_eq!(
        job_err(m.refused(Command::Job(JOB, JobCommand::CloseChallengeWindow), client(CLIENT))),
        JobError::NotTheSystem
    );
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);

    assert_eq!(m.job_status(JOB), JobStatus::Settled);
    assert!(m.m.escrows[&JOB].closed);
    for w in [W1, W2, W3] {
        // deposit − collateral + collateral + reward − commission
        assert_eq!(m.available(w), PAID_WORKER);
        assert_eq!((m.collateral(w), m.pending(w)), (0, 0));
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128, "nothing unspent");
    assert_eq!(m.available(W7), 50);
    assert_eq!(m.fees(), (3 * COMMISSION) as i128);
    assert_eq!(m.held_in_escrow(JOB), 0);
    assert_eq!(m.m.ledger.held_by_platform(Currency::Eur), (CLIENT_DEPOSIT + 3 * WORKER_DEPOSIT + 50) as i128);
    // An auditor's replay of the log arrives at the same ledger.
    assert_eq!(Marketplace::replay(m.m.seed, &m.m.log).ledger, m.m.ledger);
}

#[test]
fn one_dishonest_worker_of_three_is_outvoted_slashed_and_unpaid() {
    let mut m = market_with(&[W1, W2, W3]);
    m.funded_job();
    let events = m.compute(JOB, &[(W1, A), (W2, A), (W3, B)]);
    let (accepted, outvoted) = find(&events, |e| match e {
        Event::Job(_, JobEvent::TaskVerified { accepted, outvoted, .. }) => Some((accepted.clone(), outvoted.clone())),
        _ => None,
    });
    assert_eq!((accepted, outvoted), (vec![W1, W2], vec![W3]));
    assert_eq!(m.available(W3), (WORKER_DEPOSIT - SLASHED) as i128, "slashed at once, the rest returned");
    assert_eq!(m.track_record(W3), (-2, 0));

    m.advance(WINDOW_SECS);
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(m.available(W1), PAID_WORKER);
    assert_eq!(m.available(W2), PAID_WORKER);
    assert_eq!(m.available(W3), (WORKER_DEPOSIT - SLASHED) as i128);
    // The client gets the unearned reward back, and the slashed part of W3's collateral.
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 2 * REWARD + SLASHED) as i128);
    assert_eq!(m.fees(), (2 * COMMISSION) as i128);
}

#[test]
fn a_worker_who_never_reveals_is_dropped_at_the_reveal_deadline_and_slashed() {
    let mut m = market_with(&[W1, W2, W3]);
    m.funded_job();
    let task = m.claim_and_commit(JOB, &[(W1, A), (W2, A), (W3, A)]);
    m.reveal(JOB, task, W1, A);
    m.reveal(JOB, task, W2, A);
    let expire = Command::Job(JOB, JobCommand::ExpireClaim { task, worker: W3 });
    m.advance(REVEAL_TTL_SECS - 1);
    assert!(matches!(job_err(m.refused(expire.clone(), Actor::SYSTEM)), JobError::ClaimStillLive { .. }));
    m.advance(1);
    let events = m.ok(expire, Actor::SYSTEM);
    assert_eq!(
        &types(&events)[..5],
        ["RevealMissed", "TaskVerified", "ChallengeWindowOpened", "CollateralSlashed", "ReputationChanged"]
    );
    assert_eq!(m.track_record(W3), (-5, 0));
    m.advance(WINDOW_SECS);
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!((m.available(W1), m.available(W2)), (PAID_WORKER, PAID_WORKER));
    assert_eq!(m.available(W3), (WORKER_DEPOSIT - SLASHED) as i128);
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 2 * REWARD + SLASHED) as i128);
}

#[test]
fn an_expired_claim_is_reassigned_after_the_cooldown_at_most_three_times() {
    let mut m = market_with(&[W1, W2, W3, W4, W5, W6]);
    m.funded_job();
    let task = m.claim(JOB, W1);
    m.claim_and_commit(JOB, &[(W2, A), (W3, A)]);
    let expire = |w| Command::Job(JOB, JobCommand::ExpireClaim { task, worker: w });
    let claim = Command::Job(JOB, JobCommand::ClaimTask { task: None });

    // W1's claim lives an hour.
    m.advance(CLAIM_TTL_SECS - 1);
    assert!(matches!(job_err(m.refused(expire(W1), Actor::SYSTEM)), JobError::ClaimStillLive { .. }));
    assert_eq!(job_err(m.refused(expire(W1), worker(W2))), JobError::NotTheSystem);
    m.advance(1);
    m.ok(expire(W1), Actor::SYSTEM);
    assert_eq!(m.available(W1), WORKER_DEPOSIT as i128, "collateral returned in full");

    // The slot cools down for 30 s; W1 never gets it back.
    m.advance(REASSIGN_COOLDOWN_SECS - 1);
    assert_eq!(job_err(m.refused(claim.clone(), worker(W4))), JobError::NothingToClaim);
    m.advance(1);
    assert_eq!(job_err(m.refused(claim.clone(), worker(W1))), JobError::NothingToClaim);
    let events = m.ok(claim.clone(), worker(W4));
    assert!(
        matches!(events[0], Event::Job(_, JobEvent::ReplicaClaimed { reassignment: true, slot: 0, .. })),
        "{events:?}"
    );

    // A heartbeat keeps W4's claim alive past its first hour.
    m.advance(1_800);
    m.ok(Command::Job(JOB, JobCommand::Heartbeat { task }), worker(W4));
    m.advance(1_800);
    assert!(matches!(job_err(m.refused(expire(W4), Actor::SYSTEM)), JobError::ClaimStillLive { .. }));
    m.advance(1_800);
    m.ok(expire(W4), Actor::SYSTEM);

    // Second and third reassignment, to W5 and W6; W6's expiry is the fourth: the slot is dropped.
    for w in [W5, W6] {
        m.advance(REASSIGN_COOLDOWN_SECS);
        m.ok(claim.clone(), worker(w));
        m.advance(CLAIM_TTL_SECS);
        let events = m.ok(expire(w), Actor::SYSTEM);
        let reassignable = find(&events, |e| match e {
            Event::Job(_, JobEvent::ClaimExpired { reassignable, .. }) => Some(*reassignable),
            _ => None,
        });
        assert_eq!(reassignable, w == W5, "{w}");
        if w == W6 {
            // The two who committed long ago may now reveal.
            assert!(types(&events).contains(&"RevealPhaseStarted"), "{:?}", types(&events));
        }
    }
    m.advance(REASSIGN_COOLDOWN_SECS);
    assert_eq!(job_err(m.refused(claim, worker(W7))), JobError::NothingToClaim);

    m.reveal(JOB, task, W2, A);
    m.reveal(JOB, task, W3, A);
    assert_eq!(m.job_status(JOB), JobStatus::ChallengeWindow);
    m.advance(WINDOW_SECS);
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);

    for w in [W1, W4, W5, W6] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128, "{w}: an expired claim costs nothing");
    }
    assert_eq!((m.available(W2), m.available(W3)), (PAID_WORKER, PAID_WORKER));
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 2 * REWARD) as i128, "the dropped slot's reward refunded");
    assert_eq!(m.fees(), (2 * COMMISSION) as i128);
}

#[test]
fn a_job_that_expires_with_its_work_undone_refunds_everything() {
    let mut m = market_with(&[W1, W2]);
    m.funded_job_of(TaskClass::DscmVerified.defaults(), 2);
    m.claim(JOB, W1);
    m.claim_and_commit(JOB, &[(W2, A)]);
    m.advance(JOB_DEADLINE_SECS - 1);
    assert!(matches!(
        job_err(m.refused(Command::Job(JOB, JobCommand::Expire), Actor::SYSTEM)),
        JobError::JobDeadlineNotReached { .. }
    ));
    m.advance(1);
    assert_eq!(job_err(m.refused(Command::Job(JOB, JobCommand::Expire), client(CLIENT))), JobError::NotTheSystem);
    let events = m.ok(Command::Job(JOB, JobCommand::Expire), Actor::SYSTEM);
    let (cancelled, returned) = find(&events, |e| match e {
        Event::Job(_, JobEvent::JobExpired { cancelled_tasks, collateral_returned }) => {
            Some((cancelled_tasks.clone(), collateral_returned.clone()))
        }
        _ => None,
    });
    assert_eq!((cancelled, returned), (vec![0, 1], vec![(0, W1), (0, W2)]));
    assert_eq!(m.job_status(JOB), JobStatus::Expired);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
    assert_eq!((m.available(W1), m.available(W2)), (WORKER_DEPOSIT as i128, WORKER_DEPOSIT as i128));
    assert_eq!(m.fees(), 0);
    assert!(m.m.escrows[&JOB].closed);
}

#[test]
fn an_expiring_job_still_pays_its_verified_tasks_through_the_window() {
    let mut m = market_with(&[W1, W2, W3, W4]);
    m.funded_job_of(TaskClass::DscmVerified.defaults(), 2);
    m.compute(JOB, &[(W1, A), (W2, A), (W3, A)]);
    let other = m.claim(JOB, W4);
    assert_eq!(other, 1);
    assert_eq!(m.job_status(JOB), JobStatus::Verifying, "one task verified, one pending");
    m.advance_to(t0().plus_secs(JOB_DEADLINE_SECS));
    m.ok(Command::Job(JOB, JobCommand::Expire), Actor::SYSTEM);
    assert_eq!(m.available(W4), WORKER_DEPOSIT as i128);
    assert_eq!(m.job_status(JOB), JobStatus::ChallengeWindow);
    m.advance(WINDOW_SECS);
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(m.job_status(JOB), JobStatus::Settled);
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), PAID_WORKER);
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128, "task 1's budget refunded");
    assert_eq!(m.fees(), (3 * COMMISSION) as i128);
}

#[test]
fn claims_on_a_task_cancelled_by_expiry_are_void() {
    let mut m = market_with(&[W1, W2, W3, W4, W5, W6]);
    m.funded_job_of(TaskClass::DscmVerified.defaults(), 2);
    m.compute(JOB, &[(W1, A), (W2, A), (W3, A)]);
    // Task 1 reaches its reveal phase late, just before the job's deadline.
    m.advance_to(t0().plus_secs(JOB_DEADLINE_SECS - 60));
    let task = m.claim_and_commit(JOB, &[(W4, A), (W5, A), (W6, A)]);
    assert_eq!(task, 1);
    m.advance(60);
    m.ok(Command::Job(JOB, JobCommand::Expire), Actor::SYSTEM);
    for w in [W4, W5, W6] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128, "{w}: collateral returned with the cancellation");
    }
    // A reveal of a cancelled task counts for nothing, and its reveal deadline passing costs
    // the worker nothing: the claim went with the task.
    let reveal = Command::Job(JOB, JobCommand::RevealResult { task, result: result(A), salt: salt(W4) });
    assert_eq!(job_err(m.refused(reveal, worker(W4))), JobError::NoClaim(task));
    m.advance(REVEAL_TTL_SECS);
    let expire = Command::Job(JOB, JobCommand::ExpireClaim { task, worker: W5 });
    assert_eq!(job_err(m.refused(expire, Actor::SYSTEM)), JobError::NoClaim(task));
    assert_eq!(m.track_record(W5), (0, 0));
    m.advance(WINDOW_SECS);
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128);
    for w in [W4, W5, W6] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128);
    }
}

#[test]
fn a_client_who_cannot_afford_the_budget_funds_nothing() {
    let mut m = market_with(&[]);
    m.post_job(JOB, TaskClass::DscmVerified.defaults(), 4); // EUR 120.00 > EUR 100.00
    let e = m.refused(Command::Job(JOB, JobCommand::Fund), client(CLIENT));
    assert!(matches!(e, MarketError::Escrow(EscrowError::InsufficientFunds { .. })), "{e:?}");
    assert_eq!(m.job_status(JOB), JobStatus::Posted);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
}

#[test]
fn an_unfunded_job_expires_without_touching_money() {
    let mut m = market_with(&[]);
    m.post_job(JOB, TaskClass::DscmVerified.defaults(), 1);
    m.advance(JOB_DEADLINE_SECS);
    m.ok(Command::Job(JOB, JobCommand::Expire), Actor::SYSTEM);
    assert_eq!(m.job_status(JOB), JobStatus::Expired);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
    assert!(matches!(
        job_err(m.refused(Command::Job(JOB, JobCommand::Fund), client(CLIENT))),
        JobError::WrongStatus { .. }
    ));
}

#[test]
fn a_job_cancelled_before_any_claim_refunds_its_budget() {
    let mut m = market_with(&[W1]);
    m.funded_job();
    assert_eq!(job_err(m.refused(Command::Job(JOB, JobCommand::Cancel), worker(W1))), JobError::NotTheClient);
    m.ok(Command::Job(JOB, JobCommand::Cancel), client(CLIENT));
    assert_eq!(m.job_status(JOB), JobStatus::Cancelled);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
    assert!(matches!(
        job_err(m.refused(Command::Job(JOB, JobCommand::ClaimTask { task: None }), worker(W1))),
        JobError::WrongStatus { .. }
    ));

    // A second job, claimed: too late to cancel.
    let second = JobId(Uuid::from_u128(0x20b));
    m.post_job(second, TaskClass::DscmVerified.defaults(), 1);
    m.ok(Command::Job(second, JobCommand::Fund), client(CLIENT));
    m.claim(second, W1);
    assert_eq!(job_err(m.refused(Command::Job(second, JobCommand::Cancel), client(CLIENT))), JobError::HasClaims);
}

/// Three workers reveal A, B, C: no quorum; the dispute is open.
fn market_in_no_quorum_dispute() -> (Market, DisputeId) {
    let mut m = market_with(&[W1, W2, W3]);
    m.funded_job();
    let events = m.compute(JOB, &[(W1, A), (W2, B), (W3, C)]);
    let dispute = no_quorum_dispute(JOB, 0);
    assert!(types(&events).ends_with(&["TaskFailedNoQuorum", "DisputeOpened"]), "{:?}", types(&events));
    assert_eq!(m.job_status(JOB), JobStatus::Disputed);
    assert_eq!(m.dispute_status(dispute), DisputeStatus::Opened);
    (m, dispute)
}

#[test]
fn a_quorum_failure_goes_to_an_arbiter_whose_outcome_moves_the_money() {
    // (outcome, client's final balance, each worker's, platform fees)
    let split_to_worker = REWARD - REWARD * 30 / 100; // 700
    let rows: [(DisputeOutcome, u64, u64, u64); 3] = [
        (DisputeOutcome::Refund, CLIENT_DEPOSIT, WORKER_DEPOSIT, 0),
        (DisputeOutcome::Payout, CLIENT_DEPOSIT - 3 * REWARD, WORKER_DEPOSIT + REWARD - COMMISSION, 3 * COMMISSION),
        (
            DisputeOutcome::Split { client_pct: 30 },
            CLIENT_DEPOSIT - 3 * split_to_worker,
            WORKER_DEPOSIT + split_to_worker - split_to_worker * 8 / 100,
            3 * (split_to_worker * 8 / 100),
        ),
    ];
    for (outcome, client_after, worker_after, fees_after) in rows {
        let (mut m, dispute) = market_in_no_quorum_dispute();
        let d = |cmd| Command::Dispute(dispute, cmd);
        assert_eq!(dispute_err(m.refused(d(DisputeCommand::StartReview), worker(W1))), DisputeError::NotAnArbiter);
        m.advance(60);
        m.ok(d(DisputeCommand::StartReview), arbiter(ARBITER));
        assert_eq!(
            dispute_err(m.refused(d(DisputeCommand::Resolve { outcome }), arbiter(OTHER_ARBITER))),
            DisputeError::NotTheReviewingArbiter
        );
        assert_eq!(
            dispute_err(m.refused(d(DisputeCommand::Resolve { outcome }), worker(W2))),
            DisputeError::NotAnArbiter
        );
        m.ok(d(DisputeCommand::Resolve { outcome }), arbiter(ARBITER));
        assert_eq!(m.dispute_status(dispute), DisputeStatus::Resolved);
        assert_eq!(
            m.available(CLIENT),
            (CLIENT_DEPOSIT - 3 * REWARD) as i128,
            "{outcome:?}: no money moves before the dispute closes"
        );

        m.advance(APPEAL_SECS - 1);
        assert!(matches!(
            dispute_err(m.refused(d(DisputeCommand::Close), Actor::SYSTEM)),
            DisputeError::DeadlineNotReached { .. }
        ));
        m.advance(1);
        assert_eq!(dispute_err(m.refused(d(DisputeCommand::Close), arbiter(ARBITER))), DisputeError::NotTheSystem);
        m.ok(d(DisputeCommand::Close), Actor::SYSTEM);

        assert_eq!(m.dispute_status(dispute), DisputeStatus::Closed);
        assert_eq!(m.job_status(JOB), JobStatus::Settled, "{outcome:?}");
        assert_eq!(m.available(CLIENT), client_after as i128, "{outcome:?}: client");
        for w in [W1, W2, W3] {
            assert_eq!(m.available(w), worker_after as i128, "{outcome:?}: {w}");
            assert_eq!((m.collateral(w), m.pending(w)), (0, 0));
        }
        assert_eq!(m.fees(), fees_after as i128, "{outcome:?}: fees");
        let disputed = if outcome == DisputeOutcome::Payout { 0 } else { -3 };
        assert_eq!(m.track_record(W1).0, disputed, "{outcome:?}: reputation");
    }
}

#[test]
fn an_appeal_within_the_hour_is_decided_by_a_different_arbiter_whose_outcome_stands() {
    let (mut m, dispute) = market_in_no_quorum_dispute();
    let d = |cmd| Command::Dispute(dispute, cmd);
    m.ok(d(DisputeCommand::StartReview), arbiter(ARBITER));
    m.ok(d(DisputeCommand::Resolve { outcome: DisputeOutcome::Payout }), arbiter(ARBITER));
    m.advance(APPEAL_SECS - 1);
    assert_eq!(
        dispute_err(m.refused(d(DisputeCommand::Appeal { reason: "no".into() }), client(OTHER_CLIENT))),
        DisputeError::NotAParty
    );
    m.ok(d(DisputeCommand::Appeal { reason: "all three results differ".into() }), client(CLIENT));
    assert_eq!(m.dispute_status(dispute), DisputeStatus::Appealed);

    m.advance(APPEAL_SECS - 1);
    let decide = d(DisputeCommand::DecideAppeal { outcome: DisputeOutcome::Refund });
    assert_eq!(dispute_err(m.refused(decide.clone(), arbiter(ARBITER))), DisputeError::SameArbiterOnAppeal);
    assert!(matches!(
        dispute_err(m.refused(d(DisputeCommand::Close), Actor::SYSTEM)),
        DisputeError::DeadlineNotReached { .. }
    ));
    m.ok(decide, arbiter(OTHER_ARBITER));

    assert_eq!(m.dispute_status(dispute), DisputeStatus::Closed);
    assert_eq!(m.job_status(JOB), JobStatus::Settled);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128, "the appeal's refund stands");
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128);
    }
    assert_eq!(m.fees(), 0);
}

#[test]
fn an_appeal_nobody_decides_closes_with_the_first_resolution() {
    let (mut m, dispute) = market_in_no_quorum_dispute();
    let d = |cmd| Command::Dispute(dispute, cmd);
    m.ok(d(DisputeCommand::StartReview), arbiter(ARBITER));
    m.ok(d(DisputeCommand::Resolve { outcome: DisputeOutcome::Payout }), arbiter(ARBITER));
    m.advance(APPEAL_SECS);
    assert!(matches!(
        dispute_err(m.refused(d(DisputeCommand::Appeal { reason: "late".into() }), client(CLIENT))),
        DisputeError::DeadlinePassed { .. }
    ));
    // W2, a worker of the task, appealed in time instead (rewind: a fresh market).
    let (mut m, dispute) = market_in_no_quorum_dispute();
    let d = |cmd| Command::Dispute(dispute, cmd);
    m.ok(d(DisputeCommand::StartReview), arbiter(ARBITER));
    m.ok(d(DisputeCommand::Resolve { outcome: DisputeOutcome::Payout }), arbiter(ARBITER));
    m.advance(10);
    m.ok(d(DisputeCommand::Appeal { reason: "pay more".into() }), worker(W2));
    m.advance(APPEAL_SECS);
    m.ok(d(DisputeCommand::Close), Actor::SYSTEM);
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128);
    assert_eq!(m.available(W2), PAID_WORKER);
}

#[test]
fn a_review_deadline_that_passes_resolves_the_dispute_as_a_refund() {
    let (mut m, dispute) = market_in_no_quorum_dispute();
    let d = |cmd| Command::Dispute(dispute, cmd);
    m.advance(REVIEW_SECS_DEFAULT - 1);
    assert!(matches!(
        dispute_err(m.refused(d(DisputeCommand::ExpireReview), Actor::SYSTEM)),
        DisputeError::DeadlineNotReached { .. }
    ));
    m.advance(1);
    assert!(matches!(
        dispute_err(m.refused(d(DisputeCommand::StartReview), arbiter(ARBITER))),
        DisputeError::DeadlinePassed { .. }
    ));
    assert_eq!(dispute_err(m.refused(d(DisputeCommand::ExpireReview), arbiter(ARBITER))), DisputeError::NotTheSystem);
    m.ok(d(DisputeCommand::ExpireReview), Actor::SYSTEM);
    assert_eq!(m.m.disputes[&dispute].outcome, Some(DisputeOutcome::Refund));
    m.advance(APPEAL_SECS);
    m.ok(d(DisputeCommand::Close), Actor::SYSTEM);
    assert_eq!(m.job_status(JOB), JobStatus::Settled);
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128);
    }
}

/// A settled-to-be job: three workers verified A; the window is open; fresh workers W4–W6
/// have deposited too.
fn market_in_challenge_window() -> Market {
    let mut m = market_with(&[W1, W2, W3, W4, W5, W6]);
    m.funded_job();
    m.compute(JOB, &[(W1, A), (W2, A), (W3, A)]);
    assert_eq!(m.job_status(JOB), JobStatus::ChallengeWindow);
    m
}

/// The client challenges task 0 with a bond of one reward, then W4–W6 re-execute.
fn challenge_and_reexecute(m: &mut Market, results: [u8; 3]) -> Vec<Event> {
    m.advance(1_000);
    let open = |bond| Command::Challenge(CHALLENGE, open_challenge("energy drifts by 3 %", bond));
    let e = m.refused(open(eur(REWARD - 1)), client(CLIENT));
    assert!(matches!(e, MarketError::Job(JobError::BondTooSmall { .. })), "{e:?}");
    let events = m.ok(open(eur(REWARD)), client(CLIENT));
    assert_eq!(types(&events), ["ChallengeOpened", "ChallengeRecorded"]);
    assert_eq!(m.balance(LedgerAccount::ChallengeBond { challenge: CHALLENGE }), REWARD as i128);
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 4 * REWARD) as i128);

    // Accused workers do not re-execute; a challenge holds the window open past its end.
    let claim = Command::Job(JOB, JobCommand::ClaimTask { task: None });
    assert_eq!(job_err(m.refused(claim, worker(W1))), JobError::NothingToClaim);
    m.advance_to(m.window_closes_at(JOB));
    let e = m.refused(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(job_err(e), JobError::OpenChallengesOrDisputes);

    let replicas = [(W4, results[0]), (W5, results[1]), (W6, results[2])];
    let events = m.compute(JOB, &replicas);
    for w in [W4, W5, W6] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128, "re-execution asks no collateral");
    }
    events
}

#[test]
fn an_upheld_challenge_claws_back_the_accused_pay_slashes_them_and_returns_the_bond() {
    let mut m = market_in_challenge_window();
    let events = challenge_and_reexecute(&mut m, [B, B, B]);
    let verdict = find(&events, |e| match e {
        Event::Job(_, JobEvent::ReexecutionCompleted { verdict, .. }) => Some(*verdict),
        _ => None,
    });
    assert_eq!(verdict, ReexecutionVerdict::Upheld);
    assert_eq!(m.challenge_status(CHALLENGE), ChallengeStatus::Upheld);
    for w in [W1, W2, W3] {
        assert_eq!((m.pending(w), m.collateral(w)), (0, 0), "{w}");
        assert_eq!(m.available(w), (WORKER_DEPOSIT - SLASHED) as i128, "{w}");
        assert_eq!(m.track_record(w), (2 - 4, 0));
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT + 3 * SLASHED) as i128, "bond back, the task's pay back, slashes");

    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(m.job_status(JOB), JobStatus::Settled);
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT + 3 * SLASHED) as i128);
    for w in [W4, W5, W6] {
        assert_eq!(m.available(w), WORKER_DEPOSIT as i128, "re-execution is unpaid (ADR 0005)");
    }
    assert_eq!(m.fees(), 0);
    assert_eq!(m.held_in_escrow(JOB), 0);
}

#[test]
fn a_rejected_challenge_forfeits_the_bond_and_the_window_then_pays_the_workers() {
    let mut m = market_in_challenge_window();
    challenge_and_reexecute(&mut m, [A, A, B]);
    assert_eq!(m.challenge_status(CHALLENGE), ChallengeStatus::Rejected);
    assert_eq!(m.fees(), REWARD as i128, "the bond is forfeited to the platform");
    for w in [W1, W2, W3] {
        assert_eq!(m.track_record(w), (2 + 2, 1), "a rejected challenge keeps the streak");
    }
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), PAID_WORKER);
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 4 * REWARD) as i128);
    assert_eq!(m.fees(), (REWARD + 3 * COMMISSION) as i128);
}

#[test]
fn an_inconclusive_challenge_returns_the_bond_and_goes_to_a_dispute() {
    let mut m = market_in_challenge_window();
    let events = challenge_and_reexecute(&mut m, [A, B, C]);
    assert_eq!(m.challenge_status(CHALLENGE), ChallengeStatus::Escalated);
    let dispute = find(&events, |e| match e {
        Event::Dispute(
            id,
            DisputeEvent::DisputeOpened { reason: DisputeReason::ChallengeInconclusive, workers, .. },
        ) => {
            assert_eq!(workers, &[W1, W2, W3]);
            Some(*id)
        }
        _ => None,
    });
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * REWARD) as i128, "bond returned");
    assert_eq!(m.job_status(JOB), JobStatus::Disputed);
    assert_eq!(
        job_err(m.refused(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM)),
        JobError::OpenChallengesOrDisputes
    );

    let d = |cmd| Command::Dispute(dispute, cmd);
    m.ok(d(DisputeCommand::StartReview), arbiter(ARBITER));
    m.ok(d(DisputeCommand::Resolve { outcome: DisputeOutcome::Split { client_pct: 50 } }), arbiter(ARBITER));
    m.advance(APPEAL_SECS);
    m.ok(d(DisputeCommand::Close), Actor::SYSTEM);
    let half = REWARD / 2;
    for w in [W1, W2, W3] {
        assert_eq!(m.pending(w), half as i128, "half clawed back to the client");
    }
    assert_eq!(m.job_status(JOB), JobStatus::ChallengeWindow, "the window still closes on its own");
    m.ok(Command::Job(JOB, JobCommand::CloseChallengeWindow), Actor::SYSTEM);
    assert_eq!(m.job_status(JOB), JobStatus::Settled);
    for w in [W1, W2, W3] {
        assert_eq!(m.available(w), (WORKER_DEPOSIT + half - half * 8 / 100) as i128);
    }
    assert_eq!(m.available(CLIENT), (CLIENT_DEPOSIT - 3 * half) as i128);
    assert_eq!(m.fees(), (3 * (half * 8 / 100)) as i128);
}

#[test]
fn money_enters_by_captured_deposits_and_leaves_by_completed_payouts() {
    let mut m = market_with(&[W1]);
    // Recording the same capture twice is a no-op; reusing its reference is refused.
    let again = DepositCommand::RecordCaptured {
        party: CLIENT,
        amount: eur(CLIENT_DEPOSIT),
        provider: Provider::Manual,
        external_ref: "bank-transfer-1".into(),
    };
    let id = DepositId::of(Provider::Manual, "bank-transfer-1");
    assert!(m.ok(Command::Deposit(id, again.clone()), finance()).is_empty());
    let DepositCommand::RecordCaptured { party, provider, external_ref, .. } = again;
    let reused = DepositCommand::RecordCaptured { party, amount: eur(1), provider, external_ref };
    assert!(matches!(
        m.refused(Command::Deposit(id, reused), finance()),
        MarketError::Deposit(DepositError::ReferenceReused { .. })
    ));
    assert_eq!(m.available(CLIENT), CLIENT_DEPOSIT as i128);

    let first = PayoutId(Uuid::from_u128(0x9001));
    let second = PayoutId(Uuid::from_u128(0x9002));
    let request = |amount| PayoutCommand::Request { amount: eur(amount), provider: Provider::Stripe };
    assert!(matches!(
        m.refused(Command::Payout(first, request(WORKER_DEPOSIT + 1)), worker(W1)),
        MarketError::Payout(PayoutError::InsufficientFunds { .. })
    ));
    m.ok(Command::Payout(first, request(600)), worker(W1));
    assert_eq!((m.available(W1), m.balance(LedgerAccount::PayoutsInFlight)), (400, 600));
    m.ok(Command::Payout(first, PayoutCommand::Fail { reason: "IBAN closed".into() }), finance());
    assert_eq!((m.available(W1), m.balance(LedgerAccount::PayoutsInFlight)), (1_000, 0));
    m.ok(Command::Payout(second, request(600)), worker(W1));
    m.ok(Command::Payout(second, PayoutCommand::Complete { provider_ref: "po_123".into() }), Actor::SYSTEM);
    assert_eq!(m.available(W1), 400);
    assert_eq!(m.m.ledger.held_by_platform(Currency::Eur), (CLIENT_DEPOSIT + WORKER_DEPOSIT - 600) as i128);
    assert_eq!(
        m.balance(LedgerAccount::ProviderClearing { provider: Provider::Manual }),
        -((CLIENT_DEPOSIT + WORKER_DEPOSIT) as i128)
    );
    assert_eq!(m.balance(LedgerAccount::ProviderClearing { provider: Provider::Stripe }), 600);
    assert_eq!(m.m.ledger.sum(Currency::Eur), 0);
}
