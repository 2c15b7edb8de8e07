//! Pure: folding an aggregate's events with the domain's own `Aggregate::apply` and deriving
//! its denormalised read-model rows as JSON objects (one key per column, written with
//! `jsonb_populate_recordset`).
//!
//! A view is the domain aggregate plus the few facts the aggregate does not keep but a reader
//! wants (a challenge's reason, when a payout was requested, positions). Capturing them is
//! bookkeeping, never a decision: every rule comes from `domain`.

use std::collections::BTreeSet;

use domain::challenge::{Challenge, ChallengeEvent};
use domain::dispute::{Dispute, DisputeEvent, DisputeReason};
use domain::funds::{Payout, PayoutEvent};
use domain::ids::{DisputeId, PartyId};
use domain::job::{Job, Round, Slot, SlotState, TaskOutcome};
use domain::ledger::LedgerAccount;
use domain::worker::Worker;
use domain::{Aggregate, Event, StreamId, Timestamp};
use serde_json::{Value, json};
use uuid::Uuid;

/// Where and when an event was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub position: i64,
    pub recorded_at_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct JobView {
    pub job: Job,
    pub posted_position: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ChallengeView {
    pub challenge: Challenge,
    pub reason: String,
    pub dispute: Option<DisputeId>,
    pub opened_at_ms: i64,
    pub opened_position: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, Default)]
pub struct DisputeView {
    pub dispute: Dispute,
    pub reason: Option<DisputeReason>,
    pub appealed_by: Option<PartyId>,
    pub opened_at_ms: i64,
    pub opened_position: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, Default)]
pub struct PayoutView {
    pub payout: Payout,
    pub provider_ref: Option<String>,
    pub failure_reason: Option<String>,
    pub requested_at_ms: i64,
    pub requested_position: i64,
    pub last_position: i64,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerView {
    pub worker: Worker,
    pub last_position: i64,
}

/// The folded state of one stream whose read-model row needs the whole history.
#[derive(Debug, Clone)]
pub enum Folded {
    Job(Box<JobView>),
    Challenge(ChallengeView),
    Dispute(DisputeView),
    Payout(PayoutView),
    Worker(WorkerView),
}

/// The rows one folded stream contributes.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewRows {
    /// `(table, row)`; `None` while the stream has no row yet (e.g. no creating event).
    pub main: Option<(&'static str, Value)>,
    /// Jobs only: the job's complete set of task-board rows (empty: none).
    pub open_tasks: Option<Vec<Value>>,
}

impl Folded {
    /// The empty view for a stream whose rows are folded; `None` for streams that have none
    /// (escrow and deposit streams only move money, which `rm_balances` takes from postings).
    pub fn for_stream(stream: &StreamId) -> Option<Folded> {
        Some(match stream {
            StreamId::Job(_) => Folded::Job(Box::default()),
            StreamId::Challenge(_) => Folded::Challenge(ChallengeView::default()),
            StreamId::Dispute(_) => Folded::Dispute(DisputeView::default()),
            StreamId::Payout(_) => Folded::Payout(PayoutView::default()),
            StreamId::Worker(_) => Folded::Worker(WorkerView::default()),
            StreamId::Escrow(_) | StreamId::Deposit(_) => return None,
        })
    }

    /// Folds one event of this stream. Events of another stream type are ignored.
    pub fn apply(&mut self, event: &Event, at: At) {
        match (self, event) {
            (Folded::Job(v), Event::Job(_, e)) => {
                if v.job.terms.is_none() {
                    v.posted_position = at.position;
                }
                v.job.apply(e);
                v.last_position = at.position;
            }
            (Folded::Challenge(v), Event::Challenge(_, e)) => {
                match e {
                    ChallengeEvent::ChallengeOpened { reason, .. } => {
                        v.reason.clone_from(reason);
                        v.opened_at_ms = at.recorded_at_ms;
                        v.opened_position = at.position;
                    }
                    ChallengeEvent::ChallengeEscalated { dispute, .. } => v.dispute = Some(*dispute),
                    ChallengeEvent::ChallengeUpheld { .. } | ChallengeEvent::ChallengeRejected { .. } => {}
                }
                v.challenge.apply(e);
                v.last_position = at.position;
            }
            (Folded::Dispute(v), Event::Dispute(_, e)) => {
                match e {
                    DisputeEvent::DisputeOpened { reason, .. } => {
                        v.reason = Some(*reason);
                        v.opened_at_ms = at.recorded_at_ms;
                        v.opened_position = at.position;
                    }
                    DisputeEvent::DisputeAppealed { by, .. } => v.appealed_by = Some(*by),
                    _ => {}
                }
                v.dispute.apply(e);
                v.last_position = at.position;
            }
            (Folded::Payout(v), Event::Payout(_, e)) => {
                match e {
                    PayoutEvent::PayoutRequested { .. } => {
                        v.requested_at_ms = at.recorded_at_ms;
                        v.requested_position = at.position;
                    }
                    PayoutEvent::PayoutCompleted { provider_ref, .. } => v.provider_ref = Some(provider_ref.clone()),
                    PayoutEvent::PayoutFailed { reason, .. } => v.failure_reason = Some(reason.clone()),
                }
                v.payout.apply(e);
                v.last_position = at.position;
            }
            (Folded::Worker(v), Event::Worker(_, e)) => {
                v.worker.apply(e);
                v.last_position = at.position;
            }
            _ => {}
        }
    }

    /// The rows of stream `stream` in this state.
    pub fn rows(&self, stream: &StreamId) -> ViewRows {
        let id = stream.aggregate_id();
        match self {
            Folded::Job(v) => {
                ViewRows { main: job_row(id, v).map(|r| ("rm_jobs", r)), open_tasks: Some(open_tasks(id, v)) }
            }
            Folded::Challenge(v) => {
                ViewRows { main: challenge_row(id, v).map(|r| ("rm_challenges", r)), open_tasks: None }
            }
            Folded::Dispute(v) => ViewRows { main: dispute_row(id, v).map(|r| ("rm_disputes", r)), open_tasks: None },
            Folded::Payout(v) => ViewRows { main: payout_row(id, v).map(|r| ("rm_payouts", r)), open_tasks: None },
            Folded::Worker(v) => ViewRows {
                main: Some((
                    "rm_reputation",
                    json!({
                        "worker_id": id,
                        "score": v.worker.score,
                        "consecutive_valid": v.worker.consecutive_valid,
                        "results": v.worker.results,
                        "updated_position": v.last_position,
                    }),
                )),
                open_tasks: None,
            },
        }
    }
}

fn ms(t: Timestamp) -> i64 {
    t.unix_ms()
}

fn slot_json(index: usize, slot: &Slot) -> Value {
    let base = |state: &str| json!({"slot": index, "state": state, "reassignments": slot.reassignments});
    let mut v = match &slot.state {
        SlotState::Free => base("free"),
        SlotState::Cooling { since } => {
            let mut v = base("cooling");
            v["claimable_from_ms"] = json!(ms(since.plus_secs(domain::job::REASSIGN_COOLDOWN_SECS)));
            v
        }
        SlotState::Claimed { worker, expires_at, commitment, revealed } => {
            let state = match (commitment, revealed) {
                (_, Some(_)) => "revealed",
                (Some(_), None) => "committed",
                (None, None) => "claimed",
            };
            let mut v = base(state);
            v["worker"] = json!(worker);
            if let Some(at) = expires_at {
                v["expires_at_ms"] = json!(ms(*at));
            }
            if let Some(result) = revealed {
                // Redacted by the API for workers (see `http::redact_results`).
                v["result"] = json!(result);
            }
            v
        }
        SlotState::Dropped => base("dropped"),
    };
    if v.get("worker").is_none() {
        v["worker"] = Value::Null;
    }
    v
}

fn round_json(round: &Round) -> (Vec<Value>, Value) {
    let replicas = round.slots.iter().enumerate().map(|(i, s)| slot_json(i, s)).collect();
    (replicas, round.reveal_deadline.map_or(Value::Null, |t| json!(ms(t))))
}

fn outcome_json(outcome: &TaskOutcome) -> Value {
    match outcome {
        TaskOutcome::Pending => json!({"kind": "pending"}),
        TaskOutcome::Verified { result, accepted } => {
            json!({"kind": "verified", "result": result, "accepted": accepted})
        }
        TaskOutcome::NoQuorum { dispute } => json!({"kind": "no_quorum", "dispute": dispute}),
        TaskOutcome::Abandoned => json!({"kind": "abandoned"}),
        TaskOutcome::Cancelled => json!({"kind": "cancelled"}),
        TaskOutcome::Overturned => json!({"kind": "overturned"}),
        TaskOutcome::DisputeSettled { client_pct } => json!({"kind": "dispute_settled", "client_pct": client_pct}),
    }
}

/// The `tasks` column: per task its outcome, quorum, replicas, re-execution round and contest.
pub fn tasks_json(job: &Job) -> Value {
    let tasks: Vec<Value> = job
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (replicas, reveal_deadline) = round_json(&t.round);
            let reexecution = t.reexecution.as_ref().map_or(Value::Null, |(challenge, round)| {
                let (replicas, reveal_deadline) = round_json(round);
                json!({"challenge": challenge, "quorum": round.quorum, "reveal_deadline_ms": reveal_deadline,
                       "replicas": replicas})
            });
            let contest =
                t.contest.as_ref().map_or(Value::Null, |c| json!({"challenge": c.challenge, "dispute": c.dispute}));
            json!({
                "task": i,
                "outcome": outcome_json(&t.outcome),
                "quorum": t.round.quorum,
                "reveal_deadline_ms": reveal_deadline,
                "replicas": replicas,
                "reexecution": reexecution,
                "contest": contest,
            })
        })
        .collect();
    Value::Array(tasks)
}

fn job_row(id: Uuid, v: &JobView) -> Option<Value> {
    let terms = v.job.terms.as_ref()?;
    let workers: BTreeSet<PartyId> = v.job.tasks.iter().flat_map(|t| t.participants.iter().copied()).collect();
    let verified = v.job.tasks.iter().filter(|t| matches!(t.outcome, TaskOutcome::Verified { .. })).count();
    Some(json!({
        "job_id": id,
        "client_id": terms.client,
        "class": terms.class.as_str(),
        "status": v.job.status(),
        "currency": terms.reward_per_replica.currency.code(),
        "reward_minor_units": terms.reward_per_replica.minor_units,
        "budget_minor_units": terms.budget.minor_units,
        "task_count": v.job.tasks.len(),
        "policy": terms.policy,
        "workload_name": terms.workload.name,
        "funded": v.job.funded,
        "posted_at_ms": ms(terms.posted_at),
        "expires_at_ms": ms(terms.expires_at),
        "window_closes_at_ms": v.job.window_closes_at.map(ms),
        "tasks_verified": verified,
        "open_challenges": v.job.open_challenges.len(),
        "open_disputes": v.job.open_disputes.len(),
        "workers": workers,
        "tasks": tasks_json(&v.job),
        "posted_position": v.posted_position,
        "updated_position": v.last_position,
    }))
}

/// The job's task-board rows: rounds with free slots, or slots cooling before reassignment,
/// that the domain's claim rule (`Job::handle_claim`) would consider.
fn open_tasks(id: Uuid, v: &JobView) -> Vec<Value> {
    let job = &v.job;
    let Some(terms) = &job.terms else { return Vec::new() };
    if !job.funded || job.cancelled || job.settled {
        return Vec::new();
    }
    let mut rows = Vec::new();
    let mut push = |task: usize, round: &Round, reexecution: bool, participants: &BTreeSet<PartyId>| {
        let free = round.slots.iter().filter(|s| matches!(s.state, SlotState::Free)).count();
        let cooling_until = round
            .slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Cooling { since } => Some(ms(since.plus_secs(domain::job::REASSIGN_COOLDOWN_SECS))),
                _ => None,
            })
            .collect::<Vec<_>>();
        if free == 0 && cooling_until.is_empty() {
            return;
        }
        let collateral = if reexecution {
            0
        } else {
            terms.reward_per_replica.percent_floor(terms.policy.collateral_pct).minor_units
        };
        rows.push(json!({
            "job_id": id,
            "task": task,
            "reexecution": reexecution,
            "client_id": terms.client,
            "class": terms.class.as_str(),
            "currency": terms.reward_per_replica.currency.code(),
            "reward_minor_units": if reexecution { 0 } else { terms.reward_per_replica.minor_units },
            "collateral_minor_units": collateral,
            "free_slots": free,
            "cooling_slots": cooling_until.len(),
            "cooling_until_ms": cooling_until.iter().min(),
            "expires_at_ms": if reexecution { None } else { Some(ms(terms.expires_at)) },
            "participants": participants,
            "posted_position": v.posted_position,
        }));
    };
    for (i, task) in job.tasks.iter().enumerate() {
        if task.outcome == TaskOutcome::Cancelled {
            continue;
        }
        if let Some((_, round)) = &task.reexecution {
            push(i, round, true, &task.participants);
        }
        if !job.expired && task.outcome == TaskOutcome::Pending && task.round.reveal_deadline.is_none() {
            push(i, &task.round, false, &task.participants);
        }
    }
    rows
}

fn challenge_row(id: Uuid, v: &ChallengeView) -> Option<Value> {
    let (_, job, task, challenger, bond) = v.challenge.opened?;
    Some(json!({
        "challenge_id": id,
        "job_id": job,
        "task": task,
        "challenger_id": challenger,
        "bond_minor_units": bond.minor_units,
        "currency": bond.currency.code(),
        "reason": v.reason,
        "status": v.challenge.status(),
        "dispute_id": v.dispute,
        "opened_at_ms": v.opened_at_ms,
        "opened_position": v.opened_position,
        "updated_position": v.last_position,
    }))
}

fn dispute_row(id: Uuid, v: &DisputeView) -> Option<Value> {
    let (_, job, task, client, workers) = v.dispute.opened.as_ref()?;
    Some(json!({
        "dispute_id": id,
        "job_id": job,
        "task": task,
        "client_id": client,
        "workers": workers,
        "reason": v.reason,
        "status": v.dispute.status(),
        "deadline_ms": v.dispute.deadline.map(ms),
        "arbiter_id": v.dispute.arbiter,
        "resolved_by": v.dispute.resolved_by,
        "outcome": v.dispute.outcome,
        "appealed_by": v.appealed_by,
        "opened_at_ms": v.opened_at_ms,
        "opened_position": v.opened_position,
        "updated_position": v.last_position,
    }))
}

fn payout_row(id: Uuid, v: &PayoutView) -> Option<Value> {
    let (party, amount, provider) = v.payout.requested?;
    Some(json!({
        "payout_id": id,
        "party_id": party,
        "amount_minor_units": amount.minor_units,
        "currency": amount.currency.code(),
        "provider": provider.code(),
        "status": v.payout.finished.unwrap_or("requested"),
        "provider_ref": v.provider_ref,
        "failure_reason": v.failure_reason,
        "requested_at_ms": v.requested_at_ms,
        "requested_position": v.requested_position,
        "updated_position": v.last_position,
    }))
}

/// A ledger account's kind and the party or job it belongs to (the per-party balance views).
pub fn account_parts(account: &LedgerAccount) -> (&'static str, Option<Uuid>, Option<Uuid>) {
    match account {
        LedgerAccount::Available { party } => ("available", Some(party.0), None),
        LedgerAccount::JobEscrow { job } => ("job_escrow", None, Some(job.0)),
        LedgerAccount::WorkerCollateral { worker } => ("worker_collateral", Some(worker.0), None),
        LedgerAccount::WorkerPending { worker } => ("worker_pending", Some(worker.0), None),
        LedgerAccount::ChallengeBond { .. } => ("challenge_bond", None, None),
        LedgerAccount::PayoutsInFlight => ("payouts_in_flight", None, None),
        LedgerAccount::PlatformFees => ("platform_fees", None, None),
        LedgerAccount::ProviderClearing { .. } => ("provider_clearing", None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ids::{JobId, PayoutId};
    use domain::ledger::Provider;
    use domain::{Actor, Command, Currency, Marketplace, Money, Role};

    const T0: Timestamp = Timestamp(1_795_651_200_000);

    fn actor(role: Role, n: u128) -> Actor {
        Actor { party: PartyId(Uuid::from_u128(n)), role }
    }

    /// Folds a marketplace's log per stream and returns the job view of `job`.
    fn fold(m: &Marketplace, stream: StreamId) -> Folded {
        let mut view = Folded::for_stream(&stream).expect("folded type");
        for (i, e) in m.log.iter().enumerate().filter(|(_, e)| e.stream() == stream) {
            view.apply(e, At { position: i as i64 + 1, recorded_at_ms: T0.0 });
        }
        view
    }

    #[test]
    fn a_funded_job_is_on_the_board_until_its_slots_are_taken() {
        use domain::funds::DepositCommand;
        use domain::ids::DepositId;
        use domain::job::{JobCommand, WorkloadSpec};
        use domain::policy::TaskClass;
        let mut m = Marketplace::new(1);
        let client = actor(Role::Client, 1);
        let finance = actor(Role::Finance, 9);
        let job = JobId(Uuid::from_u128(100));
        let eur = |n| Money { minor_units: n, currency: Currency::Eur };
        m.execute(
            Command::Deposit(
                DepositId(Uuid::from_u128(5)),
                DepositCommand::RecordCaptured {
                    party: client.party,
                    amount: eur(100_000),
                    provider: Provider::Manual,
                    external_ref: "x".into(),
                },
            ),
            finance,
            T0,
        )
        .expect("deposit");
        let post = JobCommand::Post {
            job,
            class: TaskClass::DscmVerified,
            policy: TaskClass::DscmVerified.defaults(),
            reward_per_replica: eur(1_000),
            task_count: 2,
            workload: WorkloadSpec { name: "w".into(), params: String::new(), input_digest: None },
            expires_in_secs: 3_600,
        };
        m.execute(Command::Job(job, post), client, T0).expect("post");
        let view = fold(&m, StreamId::Job(job));
        assert_eq!(view.rows(&StreamId::Job(job)).open_tasks, Some(vec![]), "not funded: not on the board");
        m.execute(Command::Job(job, JobCommand::Fund), client, T0).expect("fund");
        let rows = fold(&m, StreamId::Job(job)).rows(&StreamId::Job(job));
        let board = rows.open_tasks.expect("job rows");
        assert_eq!(board.len(), 2);
        assert_eq!(board[0]["free_slots"], 3);
        assert_eq!(board[0]["collateral_minor_units"], 100);
        let (table, row) = rows.main.expect("row");
        assert_eq!(table, "rm_jobs");
        assert_eq!(row["status"], "open");
        assert_eq!(row["tasks"][1]["replicas"][2]["state"], "free");
    }

    #[test]
    fn payouts_fold_to_their_final_status() {
        let id = PayoutId(Uuid::from_u128(7));
        let party = PartyId(Uuid::from_u128(3));
        let amount = Money { minor_units: 500, currency: Currency::Usd };
        let mut view = Folded::for_stream(&StreamId::Payout(id)).expect("payout");
        let at = |p| At { position: p, recorded_at_ms: 1_000 * p };
        view.apply(
            &Event::Payout(id, PayoutEvent::PayoutRequested { party, amount, provider: Provider::Stripe }),
            at(4),
        );
        let failed = PayoutEvent::PayoutFailed { party, amount, reason: "closed".into() };
        view.apply(&Event::Payout(id, failed), at(9));
        let (_, row) = view.rows(&StreamId::Payout(id)).main.expect("row");
        assert_eq!(row["status"], "failed");
        assert_eq!(row["failure_reason"], "closed");
        assert_eq!((row["requested_position"].as_i64(), row["updated_position"].as_i64()), (Some(4), Some(9)));
        assert_eq!(row["requested_at_ms"], 4_000);
    }
}
