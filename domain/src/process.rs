//! Reactions: the rules that connect aggregates. Each event may require commands on other
//! aggregates; this table is the only place that says which.
//!
//! Reactions run in the same unit of work as the command that caused them (see
//! [`crate::market::Marketplace::execute`] and ADR 0003): if any of them is refused, the whole
//! command is refused and nothing is written. So money never moves halfway: a claim whose
//! worker cannot post collateral is no claim, a funding the client cannot afford funds nothing.

use crate::challenge::{ChallengeCommand, ChallengeEvent};
use crate::dispute::{DisputeCommand, DisputeEvent, DisputeReason};
use crate::escrow::EscrowCommand;
use crate::job::{ChallengeOutcome, JobCommand, JobEvent};
use crate::market::{Command, Event};
use crate::worker::{Outcome, WorkerCommand};

/// The commands an event requires, in order. All are issued by the platform itself.
pub fn react(event: &Event) -> Vec<Command> {
    match event {
        Event::Job(job, e) => react_to_job(*job, e),
        Event::Challenge(_, ChallengeEvent::ChallengeOpened { challenge, job, task, challenger, bond, .. }) => {
            vec![Command::Job(
                *job,
                JobCommand::RecordChallenge {
                    challenge: *challenge,
                    task: *task,
                    challenger: *challenger,
                    bond: *bond,
                },
            )]
        }
        Event::Challenge(id, e) => {
            let (job, outcome) = match e {
                ChallengeEvent::ChallengeOpened { .. } => return Vec::new(),
                ChallengeEvent::ChallengeUpheld { job, .. } => (job, ChallengeOutcome::Upheld),
                ChallengeEvent::ChallengeRejected { job, .. } => (job, ChallengeOutcome::Rejected),
                ChallengeEvent::ChallengeEscalated { job, dispute, .. } => {
                    (job, ChallengeOutcome::Escalated { dispute: *dispute })
                }
            };
            vec![Command::Job(*job, JobCommand::ResolveChallenge { challenge: *id, outcome })]
        }
        Event::Dispute(id, DisputeEvent::DisputeClosed { job, outcome, .. }) => {
            vec![Command::Job(*job, JobCommand::ResolveDispute { dispute: *id, client_pct: outcome.client_pct() })]
        }
        Event::Dispute(..) | Event::Escrow(..) | Event::Worker(..) | Event::Deposit(..) | Event::Payout(..) => {
            Vec::new()
        }
    }
}

fn react_to_job(job: crate::ids::JobId, event: &JobEvent) -> Vec<Command> {
    let escrow = |cmd| Command::Escrow(job, cmd);
    let outcome = |worker, task, outcome| Command::Worker(worker, WorkerCommand::RecordOutcome { job, task, outcome });
    match event {
        JobEvent::JobFunded { budget, escrow: terms } => {
            vec![escrow(EscrowCommand::Fund { terms: *terms, amount: *budget })]
        }
        JobEvent::JobCancelled { .. } => vec![escrow(EscrowCommand::Refund)],
        JobEvent::ReplicaClaimed { task, worker, collateral, .. } if !collateral.is_zero() => {
            vec![escrow(EscrowCommand::LockCollateral { task: *task, worker: *worker, amount: *collateral })]
        }
        JobEvent::ClaimExpired { task, worker, .. } => {
            vec![escrow(EscrowCommand::ReturnCollateral { task: *task, worker: *worker })]
        }
        JobEvent::RevealRejected { task, worker } | JobEvent::RevealMissed { task, worker } => vec![
            escrow(EscrowCommand::SlashCollateral { task: *task, worker: *worker }),
            outcome(*worker, *task, Outcome::FailedVerification),
        ],
        JobEvent::TaskVerified { task, accepted, outvoted, .. } => {
            let mut out = vec![escrow(EscrowCommand::PayWorkers { task: *task, workers: accepted.clone() })];
            out.extend(accepted.iter().map(|w| outcome(*w, *task, Outcome::Accepted)));
            for w in outvoted {
                out.push(escrow(EscrowCommand::SlashCollateral { task: *task, worker: *w }));
                out.push(outcome(*w, *task, Outcome::Outvoted));
            }
            out
        }
        JobEvent::TaskFailedNoQuorum { task, dispute, client, workers } => vec![Command::Dispute(
            *dispute,
            DisputeCommand::Open {
                dispute: *dispute,
                job,
                task: *task,
                client: *client,
                workers: workers.clone(),
                reason: DisputeReason::NoQuorum,
                review_secs: None,
            },
        )],
        JobEvent::JobExpired { collateral_returned, .. } => collateral_returned
            .iter()
            .map(|(task, worker)| escrow(EscrowCommand::ReturnCollateral { task: *task, worker: *worker }))
            .collect(),
        JobEvent::ReexecutionCompleted { challenge, verdict, .. } => {
            vec![Command::Challenge(*challenge, ChallengeCommand::Resolve { verdict: *verdict })]
        }
        JobEvent::ChallengeOutcomeApplied { task, outcome: o, client, accused, .. } => match o {
            ChallengeOutcome::Upheld => {
                let mut out = vec![escrow(EscrowCommand::ClawBack { task: *task, workers: accused.clone() })];
                for w in accused {
                    out.push(escrow(EscrowCommand::SlashCollateral { task: *task, worker: *w }));
                    out.push(outcome(*w, *task, Outcome::ChallengeUpheld));
                }
                out
            }
            ChallengeOutcome::Rejected => {
                accused.iter().map(|w| outcome(*w, *task, Outcome::ChallengeRejected)).collect()
            }
            ChallengeOutcome::Escalated { dispute } => vec![Command::Dispute(
                *dispute,
                DisputeCommand::Open {
                    dispute: *dispute,
                    job,
                    task: *task,
                    client: *client,
                    workers: accused.clone(),
                    reason: DisputeReason::ChallengeInconclusive,
                    review_secs: None,
                },
            )],
        },
        JobEvent::DisputeOutcomeApplied { task, client_pct, workers, .. } => {
            let mut out = vec![escrow(EscrowCommand::ApplyDisputeOutcome {
                task: *task,
                workers: workers.clone(),
                client_pct: *client_pct,
            })];
            if *client_pct > 0 {
                out.extend(workers.iter().map(|w| outcome(*w, *task, Outcome::Disputed)));
            }
            out
        }
        JobEvent::ChallengeWindowOpened { closes_at } => {
            vec![escrow(EscrowCommand::ScheduleRelease { not_before: *closes_at })]
        }
        JobEvent::JobSettled { .. } => vec![escrow(EscrowCommand::Release)],
        JobEvent::JobPosted { .. }
        | JobEvent::ReplicaClaimed { .. }
        | JobEvent::ClaimHeartbeat { .. }
        | JobEvent::ResultCommitted { .. }
        | JobEvent::RevealPhaseStarted { .. }
        | JobEvent::ResultRevealed { .. }
        | JobEvent::TaskAbandoned { .. }
        | JobEvent::ChallengeRecorded { .. } => Vec::new(),
    }
}
