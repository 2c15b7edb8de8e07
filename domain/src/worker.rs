//! The Worker aggregate: a machine owner's track record (reputation and consecutive valid
//! results), which feeds adaptive replication and scheduling.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ctx::CommandCtx;
use crate::ids::JobId;
use crate::ledger::{HasPostings, Posting};

/// What happened to one of the worker's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In the quorum: +2.
    Accepted,
    /// Outside the quorum: −2.
    Outvoted,
    /// The reveal did not match the commitment, or never came: −5.
    FailedVerification,
    /// A dispute went (partly) against the worker: −3.
    Disputed,
    /// A challenge against the worker's result was rejected: +2.
    ChallengeRejected,
    /// A challenge against the worker's result was upheld: −4.
    ChallengeUpheld,
}

impl Outcome {
    /// The seed's reputation deltas.
    pub fn delta(self) -> i64 {
        match self {
            Outcome::Accepted => 2,
            Outcome::Outvoted => -2,
            Outcome::FailedVerification => -5,
            Outcome::Disputed => -3,
            Outcome::ChallengeRejected => 2,
            Outcome::ChallengeUpheld => -4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerCommand {
    RecordOutcome { job: JobId, task: u32, outcome: Outcome },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    ReputationChanged { job: JobId, task: u32, outcome: Outcome, delta: i64, score: i64, consecutive_valid: u32 },
}

impl DomainEvent for WorkerEvent {
    fn event_type(&self) -> &'static str {
        "ReputationChanged"
    }
}

impl HasPostings for WorkerEvent {
    fn postings(&self) -> Vec<Posting> {
        Vec::new()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("only the platform records outcomes")]
    NotTheSystem,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Worker {
    pub score: i64,
    pub consecutive_valid: u32,
    pub results: u64,
}

impl Aggregate for Worker {
    const TYPE: &'static str = "worker";
    type Command = WorkerCommand;
    type Event = WorkerEvent;
    type Error = WorkerError;

    fn handle(&self, cmd: WorkerCommand, ctx: &CommandCtx<'_>) -> Result<Vec<WorkerEvent>, WorkerError> {
        if !ctx.actor.is_system() {
            return Err(WorkerError::NotTheSystem);
        }
        let WorkerCommand::RecordOutcome { job, task, outcome } = cmd;
        let delta = outcome.delta();
        let consecutive_valid = match outcome {
            Outcome::Accepted => self.consecutive_valid.saturating_add(1),
            Outcome::ChallengeRejected => self.consecutive_valid,
            _ => 0,
        };
        Ok(vec![WorkerEvent::ReputationChanged {
            job,
            task,
            outcome,
            delta,
            score: self.score.saturating_add(delta),
            consecutive_valid,
        }])
    }

    fn apply(&mut self, event: &WorkerEvent) {
        let WorkerEvent::ReputationChanged { score, consecutive_valid, .. } = event;
        self.score = *score;
        self.consecutive_valid = *consecutive_valid;
        self.results += 1;
    }
}
