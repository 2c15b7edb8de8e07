//! The Job lifecycle as tables: given prior events, when a command arrives from an actor at
//! an instant, expect exactly these events or this error.

use uuid::Uuid;

use super::*;
use crate::ctx::{Actor, CommissionSchedule, Facts};
use crate::money::Currency;

// ---- the cast -----------------------------------------------------------------------------

const T0_SECS: i64 = 1_795_651_200;
/// The job's deadline, from posting.
const DEADLINE: u64 = 2 * 86_400;
const REWARD: u64 = 1_000;
/// 10 % of the reward (`dscm_verified`).
const COLLATERAL: u64 = 100;
/// When the story's workers commit, reveal, and when its challenge window closes.
const COMMIT_AT: u64 = 100;
const REVEAL_AT: u64 = 200;
const WINDOW_CLOSES: u64 = REVEAL_AT + 86_400;

const JOB: JobId = JobId(Uuid::from_u128(0x10b));
const CLIENT: PartyId = PartyId(Uuid::from_u128(0xc1));
const OTHER_CLIENT: PartyId = PartyId(Uuid::from_u128(0xc2));
const W1: PartyId = PartyId(Uuid::from_u128(0x71));
const W2: PartyId = PartyId(Uuid::from_u128(0x72));
const W3: PartyId = PartyId(Uuid::from_u128(0x73));
const W4: PartyId = PartyId(Uuid::from_u128(0x74));
const W5: PartyId = PartyId(Uuid::from_u128(0x75));
const W6: PartyId = PartyId(Uuid::from_u128(0x76));
const CH: ChallengeId = ChallengeId(Uuid::from_u128(0xc4a1));
const CH2: ChallengeId = ChallengeId(Uuid::from_u128(0xc4a2));
const ESCALATED: DisputeId = DisputeId(Uuid::from_u128(0xd15));

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0_SECS).plus_secs(secs)
}

fn eur(minor_units: u64) -> Money {
    Money { minor_units, currency: Currency::Eur }
}

fn client() -> Actor {
    Actor { party: CLIENT, role: Role::Client }
}

fn worker(party: PartyId) -> Actor {
    Actor { party, role: Role::Worker }
}

const SYSTEM: Actor = Actor::SYSTEM;

/// A result manifest digest, by number.
fn result(n: u8) -> ResultValue {
    ResultValue { digest: Digest::of(&[n]), metric_micros: None }
}

fn metric(micros: i64) -> ResultValue {
    ResultValue { digest: Digest::of(&micros.to_be_bytes()), metric_micros: Some(micros) }
}

const A: u8 = 0xa;
const B: u8 = 0xb;
const C: u8 = 0xc;

/// Each worker's secret salt.
fn salt(w: PartyId) -> Digest {
    Digest::of(w.0.as_bytes())
}

fn no_quorum_dispute(task: u32) -> DisputeId {
    DisputeId(name_uuid(&["dispute", "no_quorum", &JOB.to_string(), &task.to_string()]))
}

// ---- facts --------------------------------------------------------------------------------

/// Facts with settable answers.
#[derive(Debug, Default)]
struct World {
    consecutive_valid: u32,
    draw: u64,
    schedule: CommissionSchedule,
}

impl Facts for World {
    fn available(&self, _: PartyId, _: Currency) -> u64 {
        u64::MAX
    }
    fn consecutive_valid(&self, _: PartyId) -> u32 {
        self.consecutive_valid
    }
    fn client_month_volume(&self, _: PartyId, _: Currency, _: i64) -> u64 {
        0
    }
    fn random_u64(&self) -> u64 {
        self.draw
    }
    fn commission(&self) -> &CommissionSchedule {
        &self.schedule
    }
}

fn trusted(consecutive_valid: u32, draw: u64) -> World {
    World { consecutive_valid, draw, ..World::default() }
}

// ---- commands -----------------------------------------------------------------------------

fn policy() -> VerificationPolicy {
    TaskClass::DscmVerified.defaults()
}

fn metric_policy(tolerance_micros: u64) -> VerificationPolicy {
    VerificationPolicy { verification: Verification::Metric { tolerance_micros }, ..policy() }
}

fn workload() -> WorkloadSpec {
    WorkloadSpec { name: "md-sim".into(), params: "{\"steps\":1000}".into(), input_digest: None }
}

fn post_with(policy: VerificationPolicy, task_count: u32) -> JobCommand {
    JobCommand::Post {
        job: JOB,
        class: TaskClass::DscmVerified,
        policy,
        reward_per_replica: eur(REWARD),
        task_count,
        workload: workload(),
        expires_in_secs: DEADLINE,
    }
}

fn post() -> JobCommand {
    post_with(policy(), 1)
}

/// `post()` with one field changed.
fn post_where(change: impl FnOnce(&mut JobCommand)) -> JobCommand {
    let mut cmd = post();
    change(&mut cmd);
    cmd
}

fn claim() -> JobCommand {
    JobCommand::ClaimTask { task: None }
}

fn commit(task: u32, w: PartyId, r: u8) -> JobCommand {
    JobCommand::CommitResult { task, commitment: commitment_for(JOB, task, w, &result(r), salt(w)) }
}

fn reveal(task: u32, w: PartyId, r: ResultValue) -> JobCommand {
    JobCommand::RevealResult { task, result: r, salt: salt(w) }
}

fn expire_claim(task: u32, worker: PartyId) -> JobCommand {
    JobCommand::ExpireClaim { task, worker }
}

// ---- events -------------------------------------------------------------------------------

fn posted_with(policy: VerificationPolicy, task_count: u32) -> JobEvent {
    JobEvent::JobPosted {
        job: JOB,
        client: CLIENT,
        class: TaskClass::DscmVerified,
        policy,
        reward_per_replica: eur(REWARD),
        task_count,
        budget: eur(REWARD * u64::from(policy.replication) * u64::from(task_count)),
        workload: workload(),
        posted_at: at(0),
        expires_at: at(DEADLINE),
    }
}

fn posted() -> JobEvent {
    posted_with(policy(), 1)
}

fn funded_with(policy: VerificationPolicy, task_count: u32) -> JobEvent {
    JobEvent::JobFunded {
        budget: eur(REWARD * u64::from(policy.replication) * u64::from(task_count)),
        escrow: EscrowTerms { job: JOB, client: CLIENT, reward_per_replica: eur(REWARD), slash_pct: policy.slash_pct },
    }
}

fn cancelled() -> JobEvent {
    JobEvent::JobCancelled { by: CLIENT }
}

fn claimed(task: u32, slot: u8, worker: PartyId, secs: u64) -> JobEvent {
    JobEvent::ReplicaClaimed {
        task,
        slot,
        worker,
        expires_at: at(secs + CLAIM_TTL_SECS),
        collateral: eur(COLLATERAL),
        reassignment: false,
        unreplicated: false,
        reexecution: false,
    }
}

fn reclaimed(task: u32, slot: u8, worker: PartyId, secs: u64) -> JobEvent {
    let JobEvent::ReplicaClaimed { expires_at, collateral, .. } = claimed(task, slot, worker, secs) else {
        unreachable!()
    };
    JobEvent::ReplicaClaimed {
        task,
        slot,
        worker,
        expires_at,
        collateral,
        reassignment: true,
        unreplicated: false,
        reexecution: false,
    }
}

fn reexec_claimed(slot: u8, worker: PartyId, secs: u64) -> JobEvent {
    JobEvent::ReplicaClaimed {
        task: 0,
        slot,
        worker,
        expires_at: at(secs + CLAIM_TTL_SECS),
        collateral: eur(0),
        reassignment: false,
        unreplicated: false,
        reexecution: true,
    }
}

fn claim_expired(task: u32, worker: PartyId, secs: u64, reassignable: bool) -> JobEvent {
    JobEvent::ClaimExpired { task, worker, at: at(secs), reassignable }
}

fn committed_value(task: u32, worker: PartyId, r: ResultValue) -> JobEvent {
    JobEvent::ResultCommitted { task, worker, commitment: commitment_for(JOB, task, worker, &r, salt(worker)) }
}

fn committed(task: u32, worker: PartyId, r: u8) -> JobEvent {
    committed_value(task, worker, result(r))
}

fn reveal_phase(task: u32, secs: u64) -> JobEvent {
    JobEvent::RevealPhaseStarted { task, reexecution: false, reveal_deadline: at(secs + REVEAL_TTL_SECS) }
}

fn revealed(task: u32, worker: PartyId, r: ResultValue) -> JobEvent {
    JobEvent::ResultRevealed { task, worker, result: r }
}

fn verified(task: u32, r: u8, accepted: &[PartyId], outvoted: &[PartyId]) -> JobEvent {
    JobEvent::TaskVerified { task, result: result(r), accepted: accepted.to_vec(), outvoted: outvoted.to_vec() }
}

fn window_opened(secs: u64) -> JobEvent {
    JobEvent::ChallengeWindowOpened { closes_at: at(secs + VerificationPolicy::WINDOW_SECS_DEFAULT) }
}

fn challenge_recorded(challenge: ChallengeId, challenger: PartyId) -> JobEvent {
    JobEvent::ChallengeRecorded {
        challenge,
        task: 0,
        challenger,
        bond: eur(REWARD),
        reexecution_deadline: at(1_000 + REEXECUTION_TTL_SECS),
    }
}

// ---- stories: the prior events of the usual states ---------------------------------------

fn open_with(policy: VerificationPolicy, task_count: u32) -> Vec<JobEvent> {
    vec![posted_with(policy, task_count), funded_with(policy, task_count)]
}

fn open(task_count: u32) -> Vec<JobEvent> {
    open_with(policy(), task_count)
}

/// W1, W2, W3 hold the three replicas of task 0.
fn claimed3_with(policy: VerificationPolicy, task_count: u32) -> Vec<JobEvent> {
    let mut events = open_with(policy, task_count);
    events.extend([claimed(0, 0, W1, 10), claimed(0, 1, W2, 20), claimed(0, 2, W3, 30)]);
    events
}

fn claimed3() -> Vec<JobEvent> {
    claimed3_with(policy(), 1)
}

/// …and have committed these results; the reveal phase has started.
fn committed3_values(policy: VerificationPolicy, task_count: u32, results: [ResultValue; 3]) -> Vec<JobEvent> {
    let mut events = claimed3_with(policy, task_count);
    for (w, r) in [W1, W2, W3].into_iter().zip(results) {
        events.push(committed_value(0, w, r));
    }
    events.push(reveal_phase(0, COMMIT_AT));
    events
}

fn committed3(results: [u8; 3]) -> Vec<JobEvent> {
    committed3_values(policy(), 1, results.map(result))
}

/// …and all three revealed A: the task is verified and the window is open.
fn verified_story() -> Vec<JobEvent> {
    let mut events = committed3([A, A, A]);
    events.extend([
        revealed(0, W1, result(A)),
        revealed(0, W2, result(A)),
        revealed(0, W3, result(A)),
        verified(0, A, &[W1, W2, W3], &[]),
        window_opened(REVEAL_AT),
    ]);
    events
}

/// …and `challenger` challenged the result.
fn challenged(challenger: PartyId) -> Vec<JobEvent> {
    let mut events = verified_story();
    events.push(challenge_recorded(CH, challenger));
    events
}

/// …and W4, W5, W6 re-execute and have committed; the re-execution reveal phase has started.
fn reexec_committed(results: [u8; 3]) -> Vec<JobEvent> {
    let mut events = challenged(CLIENT);
    events.extend([reexec_claimed(0, W4, 300), reexec_claimed(1, W5, 310), reexec_claimed(2, W6, 320)]);
    for (w, r) in [W4, W5, W6].into_iter().zip(results) {
        events.push(committed(0, w, r));
    }
    events.push(JobEvent::RevealPhaseStarted {
        task: 0,
        reexecution: true,
        reveal_deadline: at(400 + REVEAL_TTL_SECS),
    });
    events
}

/// The three workers revealed A, B, C: no quorum, a dispute is open.
fn no_quorum_story() -> Vec<JobEvent> {
    let mut events = committed3([A, B, C]);
    events.extend([
        revealed(0, W1, result(A)),
        revealed(0, W2, result(B)),
        revealed(0, W3, result(C)),
        JobEvent::TaskFailedNoQuorum {
            task: 0,
            dispute: no_quorum_dispute(0),
            client: CLIENT,
            workers: vec![W1, W2, W3],
        },
    ]);
    events
}

/// Slot 0 of task 0 expired and was reassigned three times (W1 → W4 → W5 → W6); W2 and W3
/// committed early.
fn reassigned_thrice(w2_w3_committed: bool) -> Vec<JobEvent> {
    let mut events = claimed3();
    if w2_w3_committed {
        events.extend([committed(0, W2, A), committed(0, W3, A)]);
    }
    events.extend([
        claim_expired(0, W1, 3_610, true),
        reclaimed(0, 0, W4, 3_640),
        claim_expired(0, W4, 7_240, true),
        reclaimed(0, 0, W5, 7_270),
        claim_expired(0, W5, 10_870, true),
        reclaimed(0, 0, W6, 10_900),
    ]);
    events
}

fn with(mut events: Vec<JobEvent>, more: impl IntoIterator<Item = JobEvent>) -> Vec<JobEvent> {
    events.extend(more);
    events
}

// ---- the check ----------------------------------------------------------------------------

struct Row {
    name: &'static str,
    given: Vec<JobEvent>,
    when: JobCommand,
    actor: Actor,
    now: Timestamp,
    world: World,
    expect: Result<Vec<JobEvent>, JobError>,
}

fn row(
    name: &'static str,
    given: Vec<JobEvent>,
    when: JobCommand,
    actor: Actor,
    now: Timestamp,
    expect: Result<Vec<JobEvent>, JobError>,
) -> Row {
    Row { name, given, when, actor, now, world: World::default(), expect }
}

impl Row {
    fn in_world(self, world: World) -> Row {
        Row { world, ..self }
    }
}

/// Given a history, when `when` is handled by `actor` at `now`, expect exactly `expect`.
#[track_caller]
fn check(given: &[JobEvent], when: JobCommand, actor: Actor, now: Timestamp, expect: Result<Vec<JobEvent>, JobError>) {
    check_in(&World::default(), "", given, when, actor, now, expect);
}

#[track_caller]
fn check_in(
    world: &World,
    name: &str,
    given: &[JobEvent],
    when: JobCommand,
    actor: Actor,
    now: Timestamp,
    expect: Result<Vec<JobEvent>, JobError>,
) {
    let job = Job::from_events(given);
    let ctx = CommandCtx { now, actor, facts: world };
    let got = job.handle(when.clone(), &ctx);
    assert_eq!(got, expect, "\nrow: {name}\nwhen: {when:?}\nactor: {actor:?}\n");
}

#[track_caller]
fn check_table(rows: Vec<Row>) {
    for r in rows {
        check_in(&r.world, r.name, &r.given, r.when, r.actor, r.now, r.expect);
    }
}

// ---- the tables ---------------------------------------------------------------------------

#[test]
fn posting_takes_a_valid_job_from_a_client_and_refuses_anything_else() {
    use JobError as E;
    let too_rich = Money { minor_units: Money::MAX_MINOR_UNITS, currency: Currency::Eur };
    check_table(vec![
        row("a client posts a job", vec![], post(), client(), at(0), Ok(vec![posted()])),
        row("a worker cannot post", vec![], post(), worker(W1), at(0), Err(E::NotAClient)),
        row("a job is posted once", vec![posted()], post(), client(), at(0), Err(E::AlreadyPosted)),
        row(
            "replication above 5 is refused",
            vec![],
            post_with(VerificationPolicy { replication: 6, ..policy() }, 1),
            client(),
            at(0),
            Err(E::Policy(PolicyError::Replication(6))),
        ),
        row(
            "a quorum above the replication is refused",
            vec![],
            post_with(VerificationPolicy { quorum: 4, ..policy() }, 1),
            client(),
            at(0),
            Err(E::Policy(PolicyError::Quorum { quorum: 4, replication: 3 })),
        ),
        row(
            "a window longer than 7 days is refused",
            vec![],
            post_with(VerificationPolicy { window_secs: 8 * 86_400, ..policy() }, 1),
            client(),
            at(0),
            Err(E::Policy(PolicyError::Window(8 * 86_400))),
        ),
        row(
            "a zero reward is refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { reward_per_replica, .. } = c {
                    *reward_per_replica = eur(0);
                }
            }),
            client(),
            at(0),
            Err(E::ZeroReward),
        ),
        row("zero tasks are refused", vec![], post_with(policy(), 0), client(), at(0), Err(E::TaskCount(0))),
        row(
            "more than 1000 tasks are refused",
            vec![],
            post_with(policy(), 1_001),
            client(),
            at(0),
            Err(E::TaskCount(1_001)),
        ),
        row(
            "an expiry under a minute is refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { expires_in_secs, .. } = c {
                    *expires_in_secs = 59;
                }
            }),
            client(),
            at(0),
            Err(E::Expiry(59)),
        ),
        row(
            "an expiry over 90 days is refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { expires_in_secs, .. } = c {
                    *expires_in_secs = EXPIRY_SECS_MAX + 1;
                }
            }),
            client(),
            at(0),
            Err(E::Expiry(EXPIRY_SECS_MAX + 1)),
        ),
        row(
            "a workload name with capitals and spaces is refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { workload, .. } = c {
                    workload.name = "MD sim".into();
                }
            }),
            client(),
            at(0),
            Err(E::WorkloadName),
        ),
        row(
            "an empty workload name is refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { workload, .. } = c {
                    workload.name.clear();
                }
            }),
            client(),
            at(0),
            Err(E::WorkloadName),
        ),
        row(
            "workload parameters over 4 KiB are refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { workload, .. } = c {
                    workload.params = "x".repeat(WORKLOAD_PARAMS_LEN_MAX + 1);
                }
            }),
            client(),
            at(0),
            Err(E::WorkloadParams),
        ),
        row(
            "a budget beyond the money maximum is refused",
            vec![],
            post_where(|c| {
                if let JobCommand::Post { reward_per_replica, .. } = c {
                    *reward_per_replica = too_rich;
                }
            }),
            client(),
            at(0),
            Err(E::BudgetOverflow),
        ),
    ]);
}

#[test]
fn only_the_jobs_client_funds_it_once_before_its_deadline() {
    use JobError as E;
    let posted_only = || vec![posted()];
    check_table(vec![
        row(
            "the client funds a posted job",
            posted_only(),
            JobCommand::Fund,
            client(),
            at(1),
            Ok(vec![funded_with(policy(), 1)]),
        ),
        row(
            "another client cannot fund it",
            posted_only(),
            JobCommand::Fund,
            Actor { party: OTHER_CLIENT, role: Role::Client },
            at(1),
            Err(E::NotTheClient),
        ),
        row(
            "the client's party acting as a worker cannot fund it",
            posted_only(),
            JobCommand::Fund,
            Actor { party: CLIENT, role: Role::Worker },
            at(1),
            Err(E::NotTheClient),
        ),
        row(
            "the platform does not fund for the client",
            posted_only(),
            JobCommand::Fund,
            SYSTEM,
            at(1),
            Err(E::NotTheClient),
        ),
        row(
            "a job is funded once",
            open(1),
            JobCommand::Fund,
            client(),
            at(1),
            Err(E::WrongStatus { status: JobStatus::Open, expected: "a posted, unfunded job" }),
        ),
        row(
            "funding at the deadline is refused",
            posted_only(),
            JobCommand::Fund,
            client(),
            at(DEADLINE),
            Err(E::JobPastDeadline { expires_at: at(DEADLINE) }),
        ),
        row(
            "a cancelled job cannot be funded",
            vec![posted(), cancelled()],
            JobCommand::Fund,
            client(),
            at(1),
            Err(E::WrongStatus { status: JobStatus::Cancelled, expected: "a posted, unfunded job" }),
        ),
        row("a job never posted cannot be funded", vec![], JobCommand::Fund, client(), at(1), Err(E::NotFound)),
    ]);
}

#[test]
fn only_the_client_cancels_and_only_before_the_first_claim() {
    use JobError as E;
    let wrong = |status| Err(E::WrongStatus { status, expected: "a posted or open job" });
    check_table(vec![
        row(
            "the client cancels a posted job",
            vec![posted()],
            JobCommand::Cancel,
            client(),
            at(5),
            Ok(vec![cancelled()]),
        ),
        row(
            "the client cancels a funded, unclaimed job",
            open(1),
            JobCommand::Cancel,
            client(),
            at(5),
            Ok(vec![cancelled()]),
        ),
        row(
            "another client cannot cancel",
            open(1),
            JobCommand::Cancel,
            Actor { party: OTHER_CLIENT, role: Role::Client },
            at(5),
            Err(E::NotTheClient),
        ),
        row("a worker cannot cancel", open(1), JobCommand::Cancel, worker(W1), at(5), Err(E::NotTheClient)),
        row(
            "a job with claims cannot be cancelled",
            claimed3(),
            JobCommand::Cancel,
            client(),
            at(50),
            Err(E::HasClaims),
        ),
        row(
            "a job still running after its claims expired cannot be cancelled",
            with(open(1), [claimed(0, 0, W1, 10), claim_expired(0, W1, 3_610, true)]),
            JobCommand::Cancel,
            client(),
            at(4_000),
            Err(E::HasClaims),
        ),
        row(
            "a cancelled job is not cancelled again",
            vec![posted(), cancelled()],
            JobCommand::Cancel,
            client(),
            at(5),
            wrong(JobStatus::Cancelled),
        ),
        row(
            "a settled job cannot be cancelled",
            with(verified_story(), [JobEvent::JobSettled { verified_tasks: 1 }]),
            JobCommand::Cancel,
            client(),
            at(WINDOW_CLOSES),
            wrong(JobStatus::Settled),
        ),
    ]);
}

#[test]
fn workers_claim_free_replicas_never_two_of_one_task() {
    use JobError as E;
    let wrong = |status| Err(E::WrongStatus { status, expected: "a funded, unsettled job" });
    let claimed_w1 = || with(open(1), [claimed(0, 0, W1, 10)]);
    check_table(vec![
        row(
            "a worker claims the first free replica",
            open(1),
            claim(),
            worker(W1),
            at(10),
            Ok(vec![claimed(0, 0, W1, 10)]),
        ),
        row(
            "the next worker gets the next slot",
            claimed_w1(),
            claim(),
            worker(W2),
            at(20),
            Ok(vec![claimed(0, 1, W2, 20)]),
        ),
        row(
            "a worker never gets two replicas of one task",
            claimed_w1(),
            claim(),
            worker(W1),
            at(20),
            Err(E::NothingToClaim),
        ),
        row(
            "a worker asking for the same task again gets nothing",
            claimed_w1(),
            JobCommand::ClaimTask { task: Some(0) },
            worker(W1),
            at(20),
            Err(E::NothingToClaim),
        ),
        row(
            "a worker holding task 0 is given task 1",
            with(open(2), [claimed(0, 0, W1, 10)]),
            claim(),
            worker(W1),
            at(20),
            Ok(vec![claimed(1, 0, W1, 20)]),
        ),
        row(
            "a worker may ask for a task",
            open(2),
            JobCommand::ClaimTask { task: Some(1) },
            worker(W1),
            at(10),
            Ok(vec![claimed(1, 0, W1, 10)]),
        ),
        row(
            "asking for a task the job lacks",
            open(2),
            JobCommand::ClaimTask { task: Some(5) },
            worker(W1),
            at(10),
            Err(E::NoSuchTask(5)),
        ),
        row("a client cannot claim", open(1), claim(), client(), at(10), Err(E::NotAWorker)),
        row("the platform cannot claim", open(1), claim(), SYSTEM, at(10), Err(E::NotAWorker)),
        row(
            "an unfunded job has nothing to claim",
            vec![posted()],
            claim(),
            worker(W1),
            at(10),
            wrong(JobStatus::Posted),
        ),
        row(
            "a cancelled job has nothing to claim",
            with(open(1), [cancelled()]),
            claim(),
            worker(W1),
            at(10),
            wrong(JobStatus::Cancelled),
        ),
        row(
            "a job past its deadline has nothing to claim",
            open(1),
            claim(),
            worker(W1),
            at(DEADLINE),
            Err(E::JobPastDeadline { expires_at: at(DEADLINE) }),
        ),
        row(
            "a task with every replica held has nothing to claim",
            claimed3(),
            claim(),
            worker(W4),
            at(40),
            Err(E::NothingToClaim),
        ),
        row(
            "an expired slot cools down for 30 s: at 29 s it is not claimable",
            with(claimed3(), [claim_expired(0, W1, 3_610, true)]),
            claim(),
            worker(W4),
            at(3_610 + 29),
            Err(E::NothingToClaim),
        ),
        row(
            "an expired slot is reassigned after 30 s",
            with(claimed3(), [claim_expired(0, W1, 3_610, true)]),
            claim(),
            worker(W4),
            at(3_640),
            Ok(vec![reclaimed(0, 0, W4, 3_640)]),
        ),
        row(
            "the worker whose claim expired does not get the task again",
            with(claimed3(), [claim_expired(0, W1, 3_610, true)]),
            claim(),
            worker(W1),
            at(3_640),
            Err(E::NothingToClaim),
        ),
        row(
            "a slot dropped after three reassignments is never claimed again",
            with(reassigned_thrice(false), [claim_expired(0, W6, 14_500, false)]),
            claim(),
            worker(OTHER_CLIENT),
            at(20_000),
            Err(E::NothingToClaim),
        ),
        row(
            "a settled job has nothing to claim",
            with(verified_story(), [JobEvent::JobSettled { verified_tasks: 1 }]),
            claim(),
            worker(W4),
            at(WINDOW_CLOSES),
            wrong(JobStatus::Settled),
        ),
    ]);
}

#[test]
fn adaptive_replication_lets_a_trusted_first_claimant_run_alone() {
    // cv = 10: run alone iff draw / 2^64 < 9/10, i.e. draw <= 16_602_069_666_338_596_454.
    const LAST_TRUSTED_DRAW: u64 = 16_602_069_666_338_596_454;
    let alone = |task, slot, worker, secs| {
        let JobEvent::ReplicaClaimed { expires_at, collateral, .. } = claimed(task, slot, worker, secs) else {
            unreachable!()
        };
        JobEvent::ReplicaClaimed {
            task,
            slot,
            worker,
            expires_at,
            collateral,
            reassignment: false,
            unreplicated: true,
            reexecution: false,
        }
    };
    check_table(vec![
        row(
            "9 consecutive valid results are never enough",
            open(1),
            claim(),
            worker(W1),
            at(10),
            Ok(vec![claimed(0, 0, W1, 10)]),
        )
        .in_world(trusted(9, 0)),
        row(
            "10 consecutive valid results and a draw below 9/10 run alone",
            open(1),
            claim(),
            worker(W1),
            at(10),
            Ok(vec![alone(0, 0, W1, 10)]),
        )
        .in_world(trusted(10, LAST_TRUSTED_DRAW)),
        row(
            "10 consecutive valid results and a draw at 9/10 are replicated",
            open(1),
            claim(),
            worker(W1),
            at(10),
            Ok(vec![claimed(0, 0, W1, 10)]),
        )
        .in_world(trusted(10, LAST_TRUSTED_DRAW + 1)),
        row(
            "a long record and the lowest draw run alone",
            open(1),
            claim(),
            worker(W1),
            at(10),
            Ok(vec![alone(0, 0, W1, 10)]),
        )
        .in_world(trusted(u32::MAX, 0)),
        row(
            "only the first claimant of a task may run alone",
            with(open(1), [claimed(0, 0, W1, 10)]),
            claim(),
            worker(W2),
            at(20),
            Ok(vec![claimed(0, 1, W2, 20)]),
        )
        .in_world(trusted(1_000, 0)),
        row(
            "a job of one replica is never marked unreplicated",
            open_with(VerificationPolicy { replication: 1, quorum: 1, ..policy() }, 1),
            claim(),
            worker(W1),
            at(10),
            Ok(vec![claimed(0, 0, W1, 10)]),
        )
        .in_world(trusted(1_000, 0)),
    ]);
    // Alone, the task is verified by that one reveal.
    let given = [open(1), vec![alone(0, 0, W1, 10), committed(0, W1, A), reveal_phase(0, COMMIT_AT)]].concat();
    check(
        &given,
        reveal(0, W1, result(A)),
        worker(W1),
        at(REVEAL_AT),
        Ok(vec![revealed(0, W1, result(A)), verified(0, A, &[W1], &[]), window_opened(REVEAL_AT)]),
    );
}

#[test]
fn trusted_to_run_alone_follows_boincs_one_minus_one_over_cv_in_integers() {
    let two_pow_64 = 1u128 << 64;
    let rows: &[(u32, u64, bool)] = &[
        (0, 0, false),
        (9, 0, false),
        (10, 0, true),
        (10, 16_602_069_666_338_596_454, true),
        (10, 16_602_069_666_338_596_455, false),
        (10, u64::MAX, false),
        (100, u64::MAX, false),
        (u32::MAX, 0, true),
    ];
    for &(cv, draw, expected) in rows {
        assert_eq!(trusted_to_run_alone(cv, draw), expected, "cv={cv} draw={draw}");
    }
    // The boundary for several cv: the largest trusted draw is ⌈(cv−1)·2^64/cv⌉ − 1.
    for cv in [10u32, 11, 16, 99, 1_000] {
        let threshold = (u128::from(cv - 1) * two_pow_64).div_ceil(u128::from(cv));
        let last = u64::try_from(threshold - 1).expect("fits");
        assert!(trusted_to_run_alone(cv, last), "cv={cv}");
        assert!(!trusted_to_run_alone(cv, last + 1), "cv={cv}");
    }
}

#[test]
fn a_claim_lives_an_hour_and_heartbeats_extend_it() {
    use JobError as E;
    let hb = JobCommand::Heartbeat { task: 0 };
    check_table(vec![
        row(
            "a heartbeat extends the claim by an hour from now",
            claimed3(),
            hb.clone(),
            worker(W1),
            at(3_000),
            Ok(vec![JobEvent::ClaimHeartbeat { task: 0, worker: W1, expires_at: at(6_600) }]),
        ),
        row(
            "a heartbeat at the expiry is too late",
            claimed3(),
            hb.clone(),
            worker(W1),
            at(3_610),
            Err(E::ClaimExpiredAt { task: 0, expires_at: at(3_610) }),
        ),
        row(
            "a committed worker has nothing to keep alive",
            with(claimed3(), [committed(0, W1, A)]),
            hb.clone(),
            worker(W1),
            at(200),
            Err(E::AlreadyCommitted),
        ),
        row(
            "a worker without a claim cannot heartbeat",
            claimed3(),
            hb.clone(),
            worker(W4),
            at(200),
            Err(E::NoClaim(0)),
        ),
        row(
            "a worker whose claim expired cannot heartbeat",
            with(claimed3(), [claim_expired(0, W1, 3_610, true)]),
            hb.clone(),
            worker(W1),
            at(3_620),
            Err(E::NoClaim(0)),
        ),
        row("a client cannot heartbeat", claimed3(), hb.clone(), client(), at(200), Err(E::NotAWorker)),
        row(
            "no heartbeat for a task the job lacks",
            claimed3(),
            JobCommand::Heartbeat { task: 9 },
            worker(W1),
            at(200),
            Err(E::NoSuchTask(9)),
        ),
        row(
            "the system expires a claim at its deadline, not before",
            claimed3(),
            expire_claim(0, W1),
            SYSTEM,
            at(3_609),
            Err(E::ClaimStillLive { task: 0, expires_at: Some(at(3_610)) }),
        ),
        row(
            "the system expires a claim at its deadline",
            claimed3(),
            expire_claim(0, W1),
            SYSTEM,
            at(3_610),
            Ok(vec![claim_expired(0, W1, 3_610, true)]),
        ),
        row(
            "a heartbeat moves the deadline",
            with(claimed3(), [JobEvent::ClaimHeartbeat { task: 0, worker: W1, expires_at: at(6_600) }]),
            expire_claim(0, W1),
            SYSTEM,
            at(3_610),
            Err(E::ClaimStillLive { task: 0, expires_at: Some(at(6_600)) }),
        ),
        row(
            "only the system expires claims",
            claimed3(),
            expire_claim(0, W1),
            worker(W2),
            at(3_610),
            Err(E::NotTheSystem),
        ),
        row(
            "an arbiter does not expire claims",
            claimed3(),
            expire_claim(0, W1),
            Actor { party: CLIENT, role: Role::Arbiter },
            at(3_610),
            Err(E::NotTheSystem),
        ),
        row("no claim, nothing to expire", claimed3(), expire_claim(0, W4), SYSTEM, at(3_610), Err(E::NoClaim(0))),
        row(
            "a committed worker waiting for the others does not expire",
            with(claimed3(), [committed(0, W1, A)]),
            expire_claim(0, W1),
            SYSTEM,
            at(10_000),
            Err(E::ClaimStillLive { task: 0, expires_at: None }),
        ),
        row(
            "the third reassignment's expiry is still reassignable",
            [
                claimed3(),
                vec![
                    claim_expired(0, W1, 3_610, true),
                    reclaimed(0, 0, W4, 3_640),
                    claim_expired(0, W4, 7_240, true),
                    reclaimed(0, 0, W5, 7_270),
                ],
            ]
            .concat(),
            expire_claim(0, W5),
            SYSTEM,
            at(10_870),
            Ok(vec![claim_expired(0, W5, 10_870, true)]),
        ),
        row(
            "after three reassignments the slot is dropped",
            reassigned_thrice(false),
            expire_claim(0, W6),
            SYSTEM,
            at(14_500),
            Ok(vec![claim_expired(0, W6, 14_500, false)]),
        ),
        row(
            "dropping the last uncommitted slot starts the reveal phase for the others",
            reassigned_thrice(true),
            expire_claim(0, W6),
            SYSTEM,
            at(14_500),
            Ok(vec![claim_expired(0, W6, 14_500, false), reveal_phase(0, 14_500)]),
        ),
    ]);
}

#[test]
fn results_are_committed_then_revealed_against_the_commitment() {
    use JobError as E;
    let deadline = at(COMMIT_AT + REVEAL_TTL_SECS);
    let after_two_reveals =
        |results| with(committed3(results), [revealed(0, W1, result(A)), revealed(0, W2, result(A))]);
    check_table(vec![
        row(
            "a worker commits a hash of its result",
            claimed3(),
            commit(0, W1, A),
            worker(W1),
            at(COMMIT_AT),
            Ok(vec![committed(0, W1, A)]),
        ),
        row(
            "the last commit opens the reveal phase for an hour",
            with(claimed3(), [committed(0, W1, A), committed(0, W2, A)]),
            commit(0, W3, A),
            worker(W3),
            at(COMMIT_AT),
            Ok(vec![committed(0, W3, A), reveal_phase(0, COMMIT_AT)]),
        ),
        row(
            "a result is committed once",
            with(claimed3(), [committed(0, W1, A)]),
            commit(0, W1, B),
            worker(W1),
            at(COMMIT_AT),
            Err(E::AlreadyCommitted),
        ),
        row(
            "a commit after the claim expired is refused",
            claimed3(),
            commit(0, W1, A),
            worker(W1),
            at(3_610),
            Err(E::ClaimExpiredAt { task: 0, expires_at: at(3_610) }),
        ),
        row(
            "a worker without a claim cannot commit",
            claimed3(),
            commit(0, W4, A),
            worker(W4),
            at(COMMIT_AT),
            Err(E::NoClaim(0)),
        ),
        row("a client cannot commit", claimed3(), commit(0, W1, A), client(), at(COMMIT_AT), Err(E::NotAWorker)),
        row(
            "a reveal before every replica has committed is refused",
            with(claimed3(), [committed(0, W1, A)]),
            reveal(0, W1, result(A)),
            worker(W1),
            at(COMMIT_AT),
            Err(E::RevealPhaseNotStarted),
        ),
        row(
            "a reveal without a commitment is refused",
            with(claimed3(), [committed(0, W2, A)]),
            reveal(0, W1, result(A)),
            worker(W1),
            at(COMMIT_AT),
            Err(E::NotCommitted),
        ),
        row(
            "a reveal matching the commitment is accepted",
            committed3([A, A, A]),
            reveal(0, W1, result(A)),
            worker(W1),
            at(REVEAL_AT),
            Ok(vec![revealed(0, W1, result(A))]),
        ),
        row(
            "a reveal of another result than committed is rejected",
            committed3([A, A, A]),
            reveal(0, W1, result(B)),
            worker(W1),
            at(REVEAL_AT),
            Ok(vec![JobEvent::RevealRejected { task: 0, worker: W1 }]),
        ),
        row(
            "a reveal with another salt is rejected",
            committed3([A, A, A]),
            JobCommand::RevealResult { task: 0, result: result(A), salt: Digest::of(b"guessed") },
            worker(W1),
            at(REVEAL_AT),
            Ok(vec![JobEvent::RevealRejected { task: 0, worker: W1 }]),
        ),
        row(
            "a copied commitment is worthless: it binds the worker who made it",
            [
                claimed3(),
                vec![
                    committed(0, W1, A),
                    JobEvent::ResultCommitted {
                        task: 0,
                        worker: W2,
                        commitment: commitment_for(JOB, 0, W1, &result(A), salt(W1)),
                    },
                    committed(0, W3, A),
                    reveal_phase(0, COMMIT_AT),
                ],
            ]
            .concat(),
            JobCommand::RevealResult { task: 0, result: result(A), salt: salt(W1) },
            worker(W2),
            at(REVEAL_AT),
            Ok(vec![JobEvent::RevealRejected { task: 0, worker: W2 }]),
        ),
        row(
            "a result is revealed once",
            with(committed3([A, A, A]), [revealed(0, W1, result(A))]),
            reveal(0, W1, result(A)),
            worker(W1),
            at(REVEAL_AT),
            Err(E::AlreadyRevealed),
        ),
        row(
            "a reveal at the reveal deadline is too late",
            committed3([A, A, A]),
            reveal(0, W1, result(A)),
            worker(W1),
            at(COMMIT_AT + REVEAL_TTL_SECS),
            Err(E::ClaimExpiredAt { task: 0, expires_at: deadline }),
        ),
        row(
            "a metric job needs the metric in the reveal",
            committed3_values(metric_policy(100), 1, [result(A), result(A), result(A)]),
            reveal(0, W1, result(A)),
            worker(W1),
            at(REVEAL_AT),
            Err(E::MetricMissing),
        ),
        row(
            "the reveal deadline passing drops an unrevealed worker",
            after_two_reveals([A, A, A]),
            expire_claim(0, W3),
            SYSTEM,
            at(COMMIT_AT + REVEAL_TTL_SECS),
            Ok(vec![
                JobEvent::RevealMissed { task: 0, worker: W3 },
                verified(0, A, &[W1, W2], &[]),
                window_opened(COMMIT_AT + REVEAL_TTL_SECS),
            ]),
        ),
        row(
            "before the reveal deadline a committed worker is not dropped",
            after_two_reveals([A, A, A]),
            expire_claim(0, W3),
            SYSTEM,
            at(COMMIT_AT + REVEAL_TTL_SECS - 1),
            Err(E::ClaimStillLive { task: 0, expires_at: Some(deadline) }),
        ),
        row(
            "a revealed worker is not dropped",
            after_two_reveals([A, A, A]),
            expire_claim(0, W1),
            SYSTEM,
            at(COMMIT_AT + REVEAL_TTL_SECS),
            Err(E::AlreadyRevealed),
        ),
        row(
            "nobody revealing abandons the task and settles the job",
            with(
                committed3([A, A, A]),
                [JobEvent::RevealMissed { task: 0, worker: W1 }, JobEvent::RevealMissed { task: 0, worker: W2 }],
            ),
            expire_claim(0, W3),
            SYSTEM,
            at(COMMIT_AT + REVEAL_TTL_SECS),
            Ok(vec![
                JobEvent::RevealMissed { task: 0, worker: W3 },
                JobEvent::TaskAbandoned { task: 0 },
                JobEvent::JobSettled { verified_tasks: 0 },
            ]),
        ),
    ]);
}

#[test]
fn commitment_for_is_the_digest_commitment_of_the_revealed_result() {
    let r = ResultValue { digest: Digest::of(b"manifest"), metric_micros: Some(-42) };
    let s = Digest::of(b"salt");
    let c = commitment_for(JOB, 3, W1, &r, s);
    assert_eq!(c, commitment(JOB, 3, W1, r.digest, Some(-42), s));
    assert_ne!(c, commitment_for(JOB, 3, W2, &r, s), "bound to the worker");
    assert_ne!(c, commitment_for(JOB, 4, W1, &r, s), "bound to the task");
    assert_ne!(c, commitment_for(JOB, 3, W1, &ResultValue { metric_micros: None, ..r }, s), "bound to the metric");
    assert_ne!(c, commitment_for(JOB, 3, W1, &r, Digest::of(b"pepper")), "bound to the salt");
}

#[test]
fn the_last_reveal_decides_the_task_by_quorum() {
    let last_reveal = |results: [u8; 3], earlier: [Option<u8>; 2]| {
        let mut events = committed3(results);
        for (w, r) in [W1, W2].into_iter().zip(earlier) {
            events.push(match r {
                Some(r) => revealed(0, w, result(r)),
                None => JobEvent::RevealRejected { task: 0, worker: w },
            });
        }
        events
    };
    let metric_story = |values: [i64; 3], tolerance| {
        let mut events = committed3_values(metric_policy(tolerance), 1, values.map(metric));
        events.extend([revealed(0, W1, metric(values[0])), revealed(0, W2, metric(values[1]))]);
        events
    };
    let metric_verified = |value, accepted: &[PartyId], outvoted: &[PartyId]| JobEvent::TaskVerified {
        task: 0,
        result: metric(value),
        accepted: accepted.to_vec(),
        outvoted: outvoted.to_vec(),
    };
    let no_quorum = |workers: &[PartyId]| JobEvent::TaskFailedNoQuorum {
        task: 0,
        dispute: no_quorum_dispute(0),
        client: CLIENT,
        workers: workers.to_vec(),
    };
    let now = at(REVEAL_AT);
    check_table(vec![
        row(
            "three equal results verify the task and open the 24 h window",
            last_reveal([A, A, A], [Some(A), Some(A)]),
            reveal(0, W3, result(A)),
            worker(W3),
            now,
            Ok(vec![revealed(0, W3, result(A)), verified(0, A, &[W1, W2, W3], &[]), window_opened(REVEAL_AT)]),
        ),
        row(
            "N=3 M=2: one dishonest worker is outvoted",
            last_reveal([A, A, B], [Some(A), Some(A)]),
            reveal(0, W3, result(B)),
            worker(W3),
            now,
            Ok(vec![revealed(0, W3, result(B)), verified(0, A, &[W1, W2], &[W3]), window_opened(REVEAL_AT)]),
        ),
        row(
            "the dishonest worker revealing first is outvoted all the same",
            last_reveal([B, A, A], [Some(B), Some(A)]),
            reveal(0, W3, result(A)),
            worker(W3),
            now,
            Ok(vec![revealed(0, W3, result(A)), verified(0, A, &[W2, W3], &[W1]), window_opened(REVEAL_AT)]),
        ),
        row(
            "three different results fail quorum and open a dispute",
            last_reveal([A, B, C], [Some(A), Some(B)]),
            reveal(0, W3, result(C)),
            worker(W3),
            now,
            Ok(vec![revealed(0, W3, result(C)), no_quorum(&[W1, W2, W3])]),
        ),
        row(
            "a rejected reveal does not count; the other two still make quorum",
            last_reveal([A, A, A], [Some(A), Some(A)]),
            reveal(0, W3, result(B)),
            worker(W3),
            now,
            Ok(vec![
                JobEvent::RevealRejected { task: 0, worker: W3 },
                verified(0, A, &[W1, W2], &[]),
                window_opened(REVEAL_AT),
            ]),
        ),
        row(
            "one honest reveal alone is short of M=2: a dispute",
            last_reveal([A, A, A], [Some(A), None]),
            reveal(0, W3, result(B)),
            worker(W3),
            now,
            Ok(vec![JobEvent::RevealRejected { task: 0, worker: W3 }, no_quorum(&[W1])]),
        ),
        row(
            "metric results within the tolerance agree",
            metric_story([1_000_000, 1_000_050, 5_000_000], 100),
            reveal(0, W3, metric(5_000_000)),
            worker(W3),
            now,
            Ok(vec![
                revealed(0, W3, metric(5_000_000)),
                metric_verified(1_000_000, &[W1, W2], &[W3]),
                window_opened(REVEAL_AT),
            ]),
        ),
        row(
            "the metric tolerance is inclusive",
            metric_story([1_000, 1_100, 1_200], 100),
            reveal(0, W3, metric(1_200)),
            worker(W3),
            now,
            Ok(vec![
                revealed(0, W3, metric(1_200)),
                metric_verified(1_100, &[W1, W2, W3], &[]),
                window_opened(REVEAL_AT),
            ]),
        ),
        row(
            "metric results beyond the tolerance fail quorum",
            metric_story([1_000, 1_101, 1_202], 100),
            reveal(0, W3, metric(1_202)),
            worker(W3),
            now,
            Ok(vec![revealed(0, W3, metric(1_202)), no_quorum(&[W1, W2, W3])]),
        ),
        row(
            "with no challenge window the job settles at once",
            with(
                committed3_values(VerificationPolicy { window_secs: 0, ..policy() }, 1, [result(A); 3]),
                [revealed(0, W1, result(A)), revealed(0, W2, result(A))],
            ),
            reveal(0, W3, result(A)),
            worker(W3),
            now,
            Ok(vec![
                revealed(0, W3, result(A)),
                verified(0, A, &[W1, W2, W3], &[]),
                JobEvent::JobSettled { verified_tasks: 1 },
            ]),
        ),
        row(
            "one task verified while another is pending opens no window",
            with(
                committed3_values(policy(), 2, [result(A); 3]),
                [revealed(0, W1, result(A)), revealed(0, W2, result(A)), claimed(1, 0, W4, 40)],
            ),
            reveal(0, W3, result(A)),
            worker(W3),
            now,
            Ok(vec![revealed(0, W3, result(A)), verified(0, A, &[W1, W2, W3], &[])]),
        ),
    ]);
}

#[test]
fn the_job_expires_at_its_deadline_cancelling_undecided_tasks() {
    use JobError as E;
    let wrong = |status| Err(E::WrongStatus { status, expected: "a job still waiting for work" });
    let half_done = || {
        with(
            committed3_values(policy(), 2, [result(A); 3]),
            [
                revealed(0, W1, result(A)),
                revealed(0, W2, result(A)),
                revealed(0, W3, result(A)),
                verified(0, A, &[W1, W2, W3], &[]),
                claimed(1, 0, W4, 300),
            ],
        )
    };
    check_table(vec![
        row(
            "not before the deadline",
            claimed3(),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE - 1),
            Err(E::JobDeadlineNotReached { expires_at: at(DEADLINE) }),
        ),
        row(
            "only the system expires jobs",
            claimed3(),
            JobCommand::Expire,
            client(),
            at(DEADLINE),
            Err(E::NotTheSystem),
        ),
        row(
            "an undecided task is cancelled, its workers' collateral returned, the job settled",
            claimed3(),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            Ok(vec![
                JobEvent::JobExpired { cancelled_tasks: vec![0], collateral_returned: vec![(0, W1), (0, W2), (0, W3)] },
                JobEvent::JobSettled { verified_tasks: 0 },
            ]),
        ),
        row(
            "a worker whose claim already expired has no collateral to return",
            with(claimed3(), [claim_expired(0, W1, 3_610, true)]),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            Ok(vec![
                JobEvent::JobExpired { cancelled_tasks: vec![0], collateral_returned: vec![(0, W2), (0, W3)] },
                JobEvent::JobSettled { verified_tasks: 0 },
            ]),
        ),
        row(
            "verified work still goes through the window",
            half_done(),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            Ok(vec![
                JobEvent::JobExpired { cancelled_tasks: vec![1], collateral_returned: vec![(1, W4)] },
                window_opened(DEADLINE),
            ]),
        ),
        row(
            "an unfunded job expires with nothing to settle",
            vec![posted()],
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            Ok(vec![JobEvent::JobExpired { cancelled_tasks: vec![0], collateral_returned: vec![] }]),
        ),
        row(
            "a reveal for a task the expiry cancelled is void",
            with(
                committed3([A, A, A]),
                [JobEvent::JobExpired {
                    cancelled_tasks: vec![0],
                    collateral_returned: vec![(0, W1), (0, W2), (0, W3)],
                }],
            ),
            reveal(0, W1, result(A)),
            worker(W1),
            at(REVEAL_AT),
            Err(E::NoClaim(0)),
        ),
        row(
            "a claim on a task the expiry cancelled does not expire again",
            with(
                claimed3(),
                [JobEvent::JobExpired {
                    cancelled_tasks: vec![0],
                    collateral_returned: vec![(0, W1), (0, W2), (0, W3)],
                }],
            ),
            expire_claim(0, W1),
            SYSTEM,
            at(DEADLINE + CLAIM_TTL_SECS),
            Err(E::NoClaim(0)),
        ),
        row(
            "a job expires once",
            with(
                claimed3(),
                [
                    JobEvent::JobExpired { cancelled_tasks: vec![0], collateral_returned: vec![] },
                    JobEvent::JobSettled { verified_tasks: 0 },
                ],
            ),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE + 1),
            wrong(JobStatus::Expired),
        ),
        row(
            "a job in its challenge window does not expire",
            verified_story(),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            wrong(JobStatus::ChallengeWindow),
        ),
        row(
            "a cancelled job does not expire",
            with(open(1), [cancelled()]),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            wrong(JobStatus::Cancelled),
        ),
        row(
            "a task in dispute is left to the dispute",
            no_quorum_story(),
            JobCommand::Expire,
            SYSTEM,
            at(DEADLINE),
            Ok(vec![JobEvent::JobExpired { cancelled_tasks: vec![], collateral_returned: vec![] }]),
        ),
    ]);
}

#[test]
fn the_window_closes_at_closes_at_and_only_without_open_contests() {
    use JobError as E;
    let settled = JobEvent::JobSettled { verified_tasks: 1 };
    let close = || JobCommand::CloseChallengeWindow;
    check_table(vec![
        row(
            "not before closes_at",
            verified_story(),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES - 1),
            Err(E::WindowStillOpen { closes_at: at(WINDOW_CLOSES) }),
        ),
        row(
            "at closes_at the job settles",
            verified_story(),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES),
            Ok(vec![settled.clone()]),
        ),
        row(
            "later is fine too",
            verified_story(),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES + 86_400),
            Ok(vec![settled.clone()]),
        ),
        row("only the system closes it", verified_story(), close(), client(), at(WINDOW_CLOSES), Err(E::NotTheSystem)),
        row(
            "no window, nothing to close",
            claimed3(),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES),
            Err(E::WrongStatus { status: JobStatus::Running, expected: "an open challenge window" }),
        ),
        row(
            "an open challenge holds the window",
            challenged(CLIENT),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES),
            Err(E::OpenChallengesOrDisputes),
        ),
        row(
            "an escalated challenge's dispute holds the window",
            with(
                challenged(CLIENT),
                [JobEvent::ChallengeOutcomeApplied {
                    challenge: CH,
                    task: 0,
                    outcome: ChallengeOutcome::Escalated { dispute: ESCALATED },
                    client: CLIENT,
                    accused: vec![W1, W2, W3],
                }],
            ),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES),
            Err(E::OpenChallengesOrDisputes),
        ),
        row(
            "a settled job's window is not closed again",
            with(verified_story(), [settled]),
            close(),
            SYSTEM,
            at(WINDOW_CLOSES),
            Err(E::WrongStatus { status: JobStatus::Settled, expected: "an open challenge window" }),
        ),
    ]);
}

#[test]
fn a_challenge_is_recorded_inside_the_window_against_a_verified_task() {
    use JobError as E;
    let record = |challenger, bond| JobCommand::RecordChallenge { challenge: CH, task: 0, challenger, bond };
    let outvoted_story = {
        let mut events = committed3([A, A, B]);
        events.extend([
            revealed(0, W1, result(A)),
            revealed(0, W2, result(A)),
            revealed(0, W3, result(B)),
            verified(0, A, &[W1, W2], &[W3]),
            window_opened(REVEAL_AT),
        ]);
        events
    };
    check_table(vec![
        row(
            "the client's challenge is recorded",
            verified_story(),
            record(CLIENT, eur(REWARD)),
            SYSTEM,
            at(1_000),
            Ok(vec![challenge_recorded(CH, CLIENT)]),
        ),
        row(
            "the last instant of the window is too late",
            verified_story(),
            record(CLIENT, eur(REWARD)),
            SYSTEM,
            at(WINDOW_CLOSES),
            Err(E::WindowClosed { closes_at: at(WINDOW_CLOSES) }),
        ),
        row(
            "a bond below one replica's reward is refused",
            verified_story(),
            record(CLIENT, eur(REWARD - 1)),
            SYSTEM,
            at(1_000),
            Err(E::BondTooSmall { offered: eur(REWARD - 1), required: eur(REWARD) }),
        ),
        row(
            "a bond in another currency is refused",
            verified_story(),
            record(CLIENT, Money { minor_units: REWARD, currency: Currency::Usd }),
            SYSTEM,
            at(1_000),
            Err(E::BondTooSmall {
                offered: Money { minor_units: REWARD, currency: Currency::Usd },
                required: eur(REWARD),
            }),
        ),
        row(
            "an accused worker cannot challenge itself",
            verified_story(),
            record(W1, eur(REWARD)),
            SYSTEM,
            at(1_000),
            Err(E::ChallengerIsAccused),
        ),
        row(
            "the outvoted worker may challenge",
            outvoted_story,
            record(W3, eur(REWARD)),
            SYSTEM,
            at(1_000),
            Ok(vec![challenge_recorded(CH, W3)]),
        ),
        row(
            "a task is challenged once at a time",
            challenged(CLIENT),
            JobCommand::RecordChallenge { challenge: CH2, task: 0, challenger: W6, bond: eur(REWARD) },
            SYSTEM,
            at(1_000),
            Err(E::TaskAlreadyContested(0)),
        ),
        row(
            "a challenge needs an open window",
            claimed3(),
            record(CLIENT, eur(REWARD)),
            SYSTEM,
            at(1_000),
            Err(E::WrongStatus { status: JobStatus::Running, expected: "an open challenge window" }),
        ),
        row(
            "a challenge needs a task that exists",
            verified_story(),
            JobCommand::RecordChallenge { challenge: CH, task: 7, challenger: CLIENT, bond: eur(REWARD) },
            SYSTEM,
            at(1_000),
            Err(E::NoSuchTask(7)),
        ),
        row(
            "a challenge needs a verified task",
            [
                committed3_values(policy(), 2, [result(A); 3]),
                vec![
                    revealed(0, W1, result(A)),
                    revealed(0, W2, result(A)),
                    revealed(0, W3, result(A)),
                    verified(0, A, &[W1, W2, W3], &[]),
                    JobEvent::TaskAbandoned { task: 1 },
                    window_opened(REVEAL_AT),
                ],
            ]
            .concat(),
            JobCommand::RecordChallenge { challenge: CH, task: 1, challenger: CLIENT, bond: eur(REWARD) },
            SYSTEM,
            at(1_000),
            Err(E::TaskNotVerified(1)),
        ),
        row(
            "only the system records challenges",
            verified_story(),
            record(CLIENT, eur(REWARD)),
            client(),
            at(1_000),
            Err(E::NotTheSystem),
        ),
    ]);
}

#[test]
fn re_execution_goes_to_fresh_workers_and_its_majority_gives_the_verdict() {
    use JobError as E;
    // Claims: fresh workers only, no collateral, even after the job's own deadline.
    check_table(vec![
        row(
            "a fresh worker claims a re-execution replica",
            challenged(CLIENT),
            claim(),
            worker(W4),
            at(300),
            Ok(vec![reexec_claimed(0, W4, 300)]),
        ),
        row(
            "an accused worker cannot re-execute",
            challenged(CLIENT),
            claim(),
            worker(W1),
            at(300),
            Err(E::NothingToClaim),
        ),
        row(
            "a worker challenger cannot re-execute its own challenge",
            challenged(W5),
            claim(),
            worker(W5),
            at(300),
            Err(E::NothingToClaim),
        ),
        row(
            "re-execution can be claimed after the job's deadline",
            challenged(CLIENT),
            claim(),
            worker(W4),
            at(DEADLINE + 10),
            Ok(vec![reexec_claimed(0, W4, DEADLINE + 10)]),
        ),
        row(
            "the last re-execution commit opens its reveal phase",
            with(
                challenged(CLIENT),
                [
                    reexec_claimed(0, W4, 300),
                    reexec_claimed(1, W5, 310),
                    reexec_claimed(2, W6, 320),
                    committed(0, W4, B),
                    committed(0, W5, B),
                ],
            ),
            commit(0, W6, B),
            worker(W6),
            at(400),
            Ok(vec![
                committed(0, W6, B),
                JobEvent::RevealPhaseStarted { task: 0, reexecution: true, reveal_deadline: at(400 + REVEAL_TTL_SECS) },
            ]),
        ),
    ]);
    // Verdicts.
    let verdict_rows: [(&str, [u8; 3], ReexecutionVerdict); 5] = [
        ("all three disagree with the accepted result: upheld", [B, B, B], ReexecutionVerdict::Upheld),
        ("a majority disagrees with it: upheld", [B, B, A], ReexecutionVerdict::Upheld),
        ("all three agree with it: rejected", [A, A, A], ReexecutionVerdict::Rejected),
        ("a majority agrees with it: rejected", [A, B, A], ReexecutionVerdict::Rejected),
        ("the fresh workers cannot agree: inconclusive", [A, B, C], ReexecutionVerdict::Inconclusive),
    ];
    for (name, results, verdict) in verdict_rows {
        let mut given = reexec_committed(results);
        given.extend([revealed(0, W4, result(results[0])), revealed(0, W5, result(results[1]))]);
        check_in(
            &World::default(),
            name,
            &given,
            reveal(0, W6, result(results[2])),
            worker(W6),
            at(500),
            Ok(vec![
                revealed(0, W6, result(results[2])),
                JobEvent::ReexecutionCompleted { challenge: CH, task: 0, verdict },
            ]),
        );
    }
    // A re-execution nobody reveals is inconclusive.
    let mut given = reexec_committed([B, B, B]);
    given.extend([JobEvent::RevealMissed { task: 0, worker: W4 }, JobEvent::RevealMissed { task: 0, worker: W5 }]);
    check(
        &given,
        expire_claim(0, W6),
        SYSTEM,
        at(400 + REVEAL_TTL_SECS),
        Ok(vec![
            JobEvent::RevealMissed { task: 0, worker: W6 },
            JobEvent::ReexecutionCompleted { challenge: CH, task: 0, verdict: ReexecutionVerdict::Inconclusive },
        ]),
    );
}

#[test]
fn challenge_and_dispute_outcomes_are_applied_to_the_task() {
    use JobError as E;
    let applied = |outcome| {
        Ok(vec![JobEvent::ChallengeOutcomeApplied {
            challenge: CH,
            task: 0,
            outcome,
            client: CLIENT,
            accused: vec![W1, W2, W3],
        }])
    };
    let escalated = || {
        with(
            challenged(CLIENT),
            [JobEvent::ChallengeOutcomeApplied {
                challenge: CH,
                task: 0,
                outcome: ChallengeOutcome::Escalated { dispute: ESCALATED },
                client: CLIENT,
                accused: vec![W1, W2, W3],
            }],
        )
    };
    let resolve = |challenge, outcome| JobCommand::ResolveChallenge { challenge, outcome };
    check_table(vec![
        row(
            "upheld: the accepted workers are accused",
            challenged(CLIENT),
            resolve(CH, ChallengeOutcome::Upheld),
            SYSTEM,
            at(600),
            applied(ChallengeOutcome::Upheld),
        ),
        row(
            "rejected",
            challenged(CLIENT),
            resolve(CH, ChallengeOutcome::Rejected),
            SYSTEM,
            at(600),
            applied(ChallengeOutcome::Rejected),
        ),
        row(
            "escalated to a dispute",
            challenged(CLIENT),
            resolve(CH, ChallengeOutcome::Escalated { dispute: ESCALATED }),
            SYSTEM,
            at(600),
            applied(ChallengeOutcome::Escalated { dispute: ESCALATED }),
        ),
        row(
            "an unknown challenge",
            challenged(CLIENT),
            resolve(CH2, ChallengeOutcome::Upheld),
            SYSTEM,
            at(600),
            Err(E::UnknownChallenge),
        ),
        row(
            "a challenge is resolved once",
            with(
                challenged(CLIENT),
                [JobEvent::ChallengeOutcomeApplied {
                    challenge: CH,
                    task: 0,
                    outcome: ChallengeOutcome::Rejected,
                    client: CLIENT,
                    accused: vec![W1, W2, W3],
                }],
            ),
            resolve(CH, ChallengeOutcome::Upheld),
            SYSTEM,
            at(600),
            Err(E::UnknownChallenge),
        ),
        row(
            "only the system resolves challenges",
            challenged(CLIENT),
            resolve(CH, ChallengeOutcome::Upheld),
            client(),
            at(600),
            Err(E::NotTheSystem),
        ),
        row(
            "a no-quorum dispute's outcome settles a job with nothing verified",
            no_quorum_story(),
            JobCommand::ResolveDispute { dispute: no_quorum_dispute(0), client_pct: 100 },
            SYSTEM,
            at(9_000),
            Ok(vec![
                JobEvent::DisputeOutcomeApplied {
                    dispute: no_quorum_dispute(0),
                    task: 0,
                    client_pct: 100,
                    workers: vec![W1, W2, W3],
                },
                JobEvent::JobSettled { verified_tasks: 0 },
            ]),
        ),
        row(
            "an escalated dispute's outcome leaves the window to close on time",
            escalated(),
            JobCommand::ResolveDispute { dispute: ESCALATED, client_pct: 50 },
            SYSTEM,
            at(9_000),
            Ok(vec![JobEvent::DisputeOutcomeApplied {
                dispute: ESCALATED,
                task: 0,
                client_pct: 50,
                workers: vec![W1, W2, W3],
            }]),
        ),
        row(
            "a percentage above 100 is refused",
            no_quorum_story(),
            JobCommand::ResolveDispute { dispute: no_quorum_dispute(0), client_pct: 101 },
            SYSTEM,
            at(9_000),
            Err(E::Percentage),
        ),
        row(
            "an unknown dispute",
            no_quorum_story(),
            JobCommand::ResolveDispute { dispute: ESCALATED, client_pct: 0 },
            SYSTEM,
            at(9_000),
            Err(E::UnknownDispute),
        ),
        row(
            "only the system applies dispute outcomes",
            no_quorum_story(),
            JobCommand::ResolveDispute { dispute: no_quorum_dispute(0), client_pct: 0 },
            Actor { party: OTHER_CLIENT, role: Role::Arbiter },
            at(9_000),
            Err(E::NotTheSystem),
        ),
    ]);
}

#[test]
fn the_status_is_read_off_the_history() {
    let expired = with(
        claimed3(),
        [
            JobEvent::JobExpired { cancelled_tasks: vec![0], collateral_returned: vec![] },
            JobEvent::JobSettled { verified_tasks: 0 },
        ],
    );
    let rows: Vec<(&str, Vec<JobEvent>, JobStatus)> = vec![
        ("nothing yet", vec![], JobStatus::None),
        ("posted", vec![posted()], JobStatus::Posted),
        ("funded, unclaimed", open(1), JobStatus::Open),
        ("claimed", claimed3(), JobStatus::Running),
        ("revealing", committed3([A, A, A]), JobStatus::Verifying),
        ("verified", verified_story(), JobStatus::ChallengeWindow),
        ("challenged", challenged(CLIENT), JobStatus::ChallengeWindow),
        ("no quorum", no_quorum_story(), JobStatus::Disputed),
        ("settled", with(verified_story(), [JobEvent::JobSettled { verified_tasks: 1 }]), JobStatus::Settled),
        ("cancelled", with(open(1), [cancelled()]), JobStatus::Cancelled),
        (
            "expired unfunded",
            vec![posted(), JobEvent::JobExpired { cancelled_tasks: vec![0], collateral_returned: vec![] }],
            JobStatus::Expired,
        ),
        ("expired with nothing verified", expired, JobStatus::Expired),
    ];
    for (name, given, status) in rows {
        assert_eq!(Job::from_events(&given).status(), status, "{name}");
    }
}

#[test]
fn two_different_groups_of_the_same_size_are_no_majority() {
    // N=4, M=2: A, A, B, B is a tie between two quorums; the reveal order must not decide.
    let revealed = vec![(W1, result(A)), (W2, result(A)), (W3, result(B)), (W4, result(B))];
    assert_eq!(majority(&revealed, 2, Verification::Exact), None);
    // A, A, A, B: a clear majority, B outvoted.
    let revealed = vec![(W1, result(A)), (W2, result(A)), (W3, result(A)), (W4, result(B))];
    assert_eq!(majority(&revealed, 2, Verification::Exact), Some((result(A), vec![W1, W2, W3])));
    // One group reached by several candidates is not a tie (metric tolerance).
    let revealed = vec![(W1, metric(1_000)), (W2, metric(1_050)), (W3, metric(1_100))];
    let (_, group) = majority(&revealed, 2, Verification::Metric { tolerance_micros: 100 }).expect("majority");
    assert_eq!(group, vec![W1, W2, W3]);
}

#[test]
fn a_party_cannot_work_on_its_own_job() {
    let job = Job::from_events(&open(1));
    let own = Actor { party: CLIENT, role: Role::Worker };
    let facts = crate::ctx::NoFacts::default();
    let ctx = CommandCtx { now: at(10), actor: own, facts: &facts };
    assert_eq!(job.handle(JobCommand::ClaimTask { task: None }, &ctx), Err(JobError::OwnJob));
}

#[test]
fn a_reexecution_that_never_finishes_is_inconclusive_after_its_deadline() {
    let job = Job::from_events(&challenged(CLIENT));
    let facts = crate::ctx::NoFacts::default();
    let ctx = |secs| CommandCtx { now: at(secs), actor: SYSTEM, facts: &facts };
    let cmd = JobCommand::ExpireReexecution { challenge: CH };
    let until = at(1_000 + REEXECUTION_TTL_SECS);
    assert_eq!(
        job.handle(cmd.clone(), &ctx(1_000 + REEXECUTION_TTL_SECS - 1)),
        Err(JobError::ReexecutionStillRunning { until })
    );
    assert_eq!(
        job.handle(cmd.clone(), &ctx(1_000 + REEXECUTION_TTL_SECS)),
        Ok(vec![JobEvent::ReexecutionCompleted { challenge: CH, task: 0, verdict: ReexecutionVerdict::Inconclusive }])
    );
    let as_worker = CommandCtx { now: at(1_000 + REEXECUTION_TTL_SECS), actor: worker(W1), facts: &facts };
    assert_eq!(job.handle(cmd, &as_worker), Err(JobError::NotTheSystem));
}
