//! Which deadlines each event arms, moves or cancels: the pure half of the durable scheduler.
//!
//! A deadline is a command the platform must issue when its time comes: expire a claim, close a
//! challenge window, expire a job, resolve an unreviewed dispute, close a dispute whose appeal
//! window passed. Deadlines have stable ids, so an event that moves one (a heartbeat) replaces
//! it, and an event that ends one (a reveal, a settlement) cancels it. A deadline can be
//! **parked**: known but not yet timed (a committed worker's reveal deadline starts only when
//! every slot has committed) or blocked (a window cannot close while a challenge is open);
//! a later event releases it.
//!
//! The scheduler stores these changes as a projection of the log and fires due deadlines with
//! the command below; the aggregate still decides, so a deadline that became moot is refused
//! and dropped.

use crate::dispute::DisputeEvent;
use crate::ids::{DisputeId, JobId};
use crate::job::{JobCommand, JobEvent};
use crate::market::{Command, Event};
use crate::time::Timestamp;

/// One change to the set of pending deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineChange {
    /// Create or replace the deadline `id`; `due: None` arms it parked.
    Arm {
        id: String,
        due: Option<Timestamp>,
        command: Command,
    },
    Cancel {
        id: String,
    },
    /// Un-park every deadline whose id starts with `prefix`, at `due` (or at its own time).
    Release {
        prefix: String,
        due: Option<Timestamp>,
    },
}

pub fn job_expiry_id(job: JobId) -> String {
    format!("job:{job}:expire")
}

pub fn window_id(job: JobId) -> String {
    format!("job:{job}:window")
}

pub fn claim_id(job: JobId, task: u32, worker: crate::ids::PartyId) -> String {
    format!("claim:{job}:{task}:{worker}")
}

fn claims_of_task(job: JobId, task: u32) -> String {
    format!("claim:{job}:{task}:")
}

pub fn reexecution_id(challenge: crate::ids::ChallengeId) -> String {
    format!("challenge:{challenge}:reexecution")
}

pub fn review_id(dispute: DisputeId) -> String {
    format!("dispute:{dispute}:review")
}

pub fn close_id(dispute: DisputeId) -> String {
    format!("dispute:{dispute}:close")
}

/// The deadline changes `event` causes, in order.
pub fn deadline_changes(event: &Event) -> Vec<DeadlineChange> {
    use DeadlineChange::{Arm, Cancel, Release};
    match event {
        Event::Job(job, e) => {
            let job = *job;
            let claim = |task: u32, worker, due| Arm {
                id: claim_id(job, task, worker),
                due,
                command: Command::Job(job, JobCommand::ExpireClaim { task, worker }),
            };
            match e {
                JobEvent::JobPosted { expires_at, .. } => {
                    vec![Arm {
                        id: job_expiry_id(job),
                        due: Some(*expires_at),
                        command: Command::Job(job, JobCommand::Expire),
                    }]
                }
                JobEvent::ReplicaClaimed { task, worker, expires_at, .. }
                | JobEvent::ClaimHeartbeat { task, worker, expires_at } => {
                    vec![claim(*task, *worker, Some(*expires_at))]
                }
                // A committed worker waits for the others; its reveal deadline starts with the
                // reveal phase.
                JobEvent::ResultCommitted { task, worker, .. } => vec![claim(*task, *worker, None)],
                JobEvent::RevealPhaseStarted { task, reveal_deadline, .. } => {
                    vec![Release { prefix: claims_of_task(job, *task), due: Some(*reveal_deadline) }]
                }
                JobEvent::ResultRevealed { task, worker, .. }
                | JobEvent::RevealRejected { task, worker }
                | JobEvent::RevealMissed { task, worker }
                | JobEvent::ClaimExpired { task, worker, .. } => vec![Cancel { id: claim_id(job, *task, *worker) }],
                JobEvent::ChallengeWindowOpened { closes_at } => vec![
                    Cancel { id: job_expiry_id(job) },
                    Arm {
                        id: window_id(job),
                        due: Some(*closes_at),
                        command: Command::Job(job, JobCommand::CloseChallengeWindow),
                    },
                ],
                JobEvent::ChallengeOutcomeApplied { .. } | JobEvent::DisputeOutcomeApplied { .. } => {
                    vec![Release { prefix: window_id(job), due: None }]
                }
                JobEvent::JobCancelled { .. } | JobEvent::JobSettled { .. } => {
                    vec![Cancel { id: job_expiry_id(job) }, Cancel { id: window_id(job) }]
                }
                JobEvent::JobExpired { .. } => vec![Cancel { id: job_expiry_id(job) }],
                JobEvent::ChallengeRecorded { challenge, reexecution_deadline, .. } => vec![Arm {
                    id: reexecution_id(*challenge),
                    due: Some(*reexecution_deadline),
                    command: Command::Job(job, JobCommand::ExpireReexecution { challenge: *challenge }),
                }],
                JobEvent::ReexecutionCompleted { challenge, .. } => vec![Cancel { id: reexecution_id(*challenge) }],
                JobEvent::JobFunded { .. }
                | JobEvent::TaskVerified { .. }
                | JobEvent::TaskFailedNoQuorum { .. }
                | JobEvent::TaskAbandoned { .. } => Vec::new(),
            }
        }
        Event::Dispute(dispute, e) => {
            let dispute = *dispute;
            let close = |due| Arm {
                id: close_id(dispute),
                due: Some(due),
                command: Command::Dispute(dispute, crate::dispute::DisputeCommand::Close),
            };
            match e {
                DisputeEvent::DisputeOpened { review_deadline, .. } => vec![Arm {
                    id: review_id(dispute),
                    due: Some(*review_deadline),
                    command: Command::Dispute(dispute, crate::dispute::DisputeCommand::ExpireReview),
                }],
                DisputeEvent::ReviewStarted { .. } => Vec::new(),
                DisputeEvent::DisputeResolved { appeal_deadline, .. } => {
                    vec![Cancel { id: review_id(dispute) }, close(*appeal_deadline)]
                }
                DisputeEvent::DisputeAppealed { decision_deadline, .. } => vec![close(*decision_deadline)],
                DisputeEvent::DisputeClosed { .. } => {
                    vec![Cancel { id: review_id(dispute) }, Cancel { id: close_id(dispute) }]
                }
            }
        }
        Event::Escrow(..) | Event::Challenge(..) | Event::Worker(..) | Event::Deposit(..) | Event::Payout(..) => {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PartyId;
    use uuid::Uuid;

    const JOB: JobId = JobId(Uuid::from_u128(1));
    const W: PartyId = PartyId(Uuid::from_u128(2));

    #[test]
    fn a_claim_is_timed_by_its_heartbeats_parked_once_committed_and_released_with_the_reveal_phase() {
        let t = Timestamp(1_000_000);
        let claimed =
            deadline_changes(&Event::Job(JOB, JobEvent::ClaimHeartbeat { task: 3, worker: W, expires_at: t }));
        assert_eq!(
            claimed,
            vec![DeadlineChange::Arm {
                id: claim_id(JOB, 3, W),
                due: Some(t),
                command: Command::Job(JOB, JobCommand::ExpireClaim { task: 3, worker: W }),
            }]
        );
        let committed = deadline_changes(&Event::Job(
            JOB,
            JobEvent::ResultCommitted { task: 3, worker: W, commitment: crate::digest::Digest([0; 32]) },
        ));
        assert!(matches!(&committed[..], [DeadlineChange::Arm { due: None, .. }]));
        let phase = deadline_changes(&Event::Job(
            JOB,
            JobEvent::RevealPhaseStarted { task: 3, reexecution: false, reveal_deadline: t },
        ));
        assert_eq!(phase, vec![DeadlineChange::Release { prefix: format!("claim:{JOB}:3:"), due: Some(t) }]);
        assert!(claim_id(JOB, 3, W).starts_with(&format!("claim:{JOB}:3:")));
        assert!(!claim_id(JOB, 31, W).starts_with(&format!("claim:{JOB}:3:")), "task 31 is not task 3");
    }
}
