//! The Escrow aggregate: the money of one job (same id as the job) and its workers' collateral.
//!
//! Money enters from the client's available balance when the job is funded. On verification a
//! replica's reward moves to the worker's pending balance; when the challenge window closes,
//! pending moves to the worker's available balance minus the platform commission, collateral is
//! returned, and whatever was not earned goes back to the client. Collateral is held per
//! (task, worker) and either returned or slashed — slashing debits it once: the slashed part
//! to the harmed client, the remainder back to the worker.
//!
//! Conservation, asserted after every event by the property tests:
//! `funded = held + Σ pending + released + clawed_back + refunded`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ctx::CommandCtx;
use crate::ids::{JobId, PartyId};
use crate::ledger::{HasPostings, LedgerAccount, Posting};
use crate::money::{Currency, Money};
use crate::time::Timestamp;

/// The terms the escrow pays by, copied from the job when it is funded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowTerms {
    pub job: JobId,
    pub client: PartyId,
    pub reward_per_replica: Money,
    pub slash_pct: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EscrowCommand {
    /// Take the budget from the client's available balance.
    Fund {
        terms: EscrowTerms,
        amount: Money,
    },
    LockCollateral {
        task: u32,
        worker: PartyId,
        amount: Money,
    },
    ReturnCollateral {
        task: u32,
        worker: PartyId,
    },
    SlashCollateral {
        task: u32,
        worker: PartyId,
    },
    /// Verified: each worker's reward moves to its pending balance.
    PayWorkers {
        task: u32,
        workers: Vec<PartyId>,
    },
    /// A challenge upheld: the wrong workers' pending payment goes back to the client.
    ClawBack {
        task: u32,
        workers: Vec<PartyId>,
    },
    /// A dispute decided: `client_pct` of the stake to the client, the rest to the workers.
    ApplyDisputeOutcome {
        task: u32,
        workers: Vec<PartyId>,
        client_pct: u8,
    },
    /// The window closes at `not_before`; no release before it.
    ScheduleRelease {
        not_before: Timestamp,
    },
    /// Settle: pending → available minus commission, collateral back, the rest refunded.
    Release,
    /// Cancelled before any work: everything back to the client.
    Refund,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EscrowEvent {
    EscrowFunded {
        terms: EscrowTerms,
        amount: Money,
    },
    CollateralLocked {
        task: u32,
        worker: PartyId,
        amount: Money,
    },
    CollateralReturned {
        task: u32,
        worker: PartyId,
        amount: Money,
    },
    /// One debit of the collateral: `slashed` to the client, `returned` to the worker.
    CollateralSlashed {
        task: u32,
        worker: PartyId,
        client: PartyId,
        slashed: Money,
        returned: Money,
    },
    WorkerPaymentPending {
        task: u32,
        worker: PartyId,
        amount: Money,
    },
    PaymentClawedBack {
        task: u32,
        worker: PartyId,
        client: PartyId,
        amount: Money,
    },
    ReleaseScheduled {
        not_before: Timestamp,
    },
    PendingReleased {
        worker: PartyId,
        client: PartyId,
        gross: Money,
        commission: Money,
        /// The client's settled volume this month before this release (commission tier).
        month_index: i64,
        volume_before: u64,
    },
    EscrowRefunded {
        client: PartyId,
        amount: Money,
    },
    EscrowClosed,
}

impl DomainEvent for EscrowEvent {
    fn event_type(&self) -> &'static str {
        match self {
            EscrowEvent::EscrowFunded { .. } => "EscrowFunded",
            EscrowEvent::CollateralLocked { .. } => "CollateralLocked",
            EscrowEvent::CollateralReturned { .. } => "CollateralReturned",
            EscrowEvent::CollateralSlashed { .. } => "CollateralSlashed",
            EscrowEvent::WorkerPaymentPending { .. } => "WorkerPaymentPending",
            EscrowEvent::PaymentClawedBack { .. } => "PaymentClawedBack",
            EscrowEvent::ReleaseScheduled { .. } => "ReleaseScheduled",
            EscrowEvent::PendingReleased { .. } => "PendingReleased",
            EscrowEvent::EscrowRefunded { .. } => "EscrowRefunded",
            EscrowEvent::EscrowClosed => "EscrowClosed",
        }
    }
}

/// Which event touches which accounts; only this mapping knows.
pub fn escrow_postings(job: JobId, event: &EscrowEvent) -> Vec<Posting> {
    use LedgerAccount as A;
    let escrow = A::JobEscrow { job };
    match event {
        EscrowEvent::EscrowFunded { terms, amount } => {
            vec![Posting::new(A::Available { party: terms.client }, escrow, *amount)]
        }
        EscrowEvent::CollateralLocked { worker, amount, .. } => {
            vec![Posting::new(A::Available { party: *worker }, A::WorkerCollateral { worker: *worker }, *amount)]
        }
        EscrowEvent::CollateralReturned { worker, amount, .. } => {
            vec![Posting::new(A::WorkerCollateral { worker: *worker }, A::Available { party: *worker }, *amount)]
        }
        EscrowEvent::CollateralSlashed { worker, client, slashed, returned, .. } => vec![
            Posting::new(A::WorkerCollateral { worker: *worker }, A::Available { party: *client }, *slashed),
            Posting::new(A::WorkerCollateral { worker: *worker }, A::Available { party: *worker }, *returned),
        ],
        EscrowEvent::WorkerPaymentPending { worker, amount, .. } => {
            vec![Posting::new(escrow, A::WorkerPending { worker: *worker }, *amount)]
        }
        EscrowEvent::PaymentClawedBack { worker, client, amount, .. } => {
            vec![Posting::new(A::WorkerPending { worker: *worker }, A::Available { party: *client }, *amount)]
        }
        EscrowEvent::PendingReleased { worker, gross, commission, .. } => {
            let net =
                Money { minor_units: gross.minor_units - commission.minor_units.min(gross.minor_units), ..*gross };
            vec![
                Posting::new(A::WorkerPending { worker: *worker }, A::Available { party: *worker }, net),
                Posting::new(A::WorkerPending { worker: *worker }, A::PlatformFees, *commission),
            ]
        }
        EscrowEvent::EscrowRefunded { client, amount } => {
            vec![Posting::new(escrow, A::Available { party: *client }, *amount)]
        }
        EscrowEvent::ReleaseScheduled { .. } | EscrowEvent::EscrowClosed => Vec::new(),
    }
    .into_iter()
    .filter(|p| !p.amount.is_zero())
    .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    #[error("only the platform moves escrowed money")]
    NotTheSystem,
    #[error("escrow already funded")]
    AlreadyFunded,
    #[error("escrow not funded")]
    NotFunded,
    #[error("escrow closed")]
    Closed,
    #[error("currency {got} does not match the job's {expected}")]
    WrongCurrency { expected: Currency, got: Currency },
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("insufficient funds: available {available}, requested {requested}")]
    InsufficientFunds { available: Money, requested: Money },
    #[error("collateral for task {task} already held from this worker")]
    CollateralAlreadyHeld { task: u32 },
    #[error("escrow holds {held}, cannot pay {requested}")]
    EscrowExhausted { held: Money, requested: Money },
    #[error("worker already paid for task {task}")]
    AlreadyPaid { task: u32 },
    #[error("no release before {not_before}")]
    ReleaseBeforeWindowClosed { not_before: Timestamp },
    #[error("percentage must be 0..=100")]
    Percentage,
    #[error("payments are pending; release them instead of refunding")]
    PendingPayments,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Escrow {
    pub terms: Option<EscrowTerms>,
    pub funded: u64,
    /// What is in the job's escrow account now.
    pub held: u64,
    pub collateral: BTreeMap<(u32, PartyId), u64>,
    pub pending: BTreeMap<(u32, PartyId), u64>,
    /// Workers ever paid for a task (a replica is paid at most once).
    pub paid: BTreeMap<(u32, PartyId), u64>,
    pub released_gross: u64,
    pub commission: u64,
    pub clawed_back: u64,
    pub refunded: u64,
    pub release_not_before: Option<Timestamp>,
    pub closed: bool,
}

impl Escrow {
    fn money(&self, minor_units: u64) -> Money {
        let currency = self.terms.map_or(Currency::Eur, |t| t.reward_per_replica.currency);
        Money { minor_units, currency }
    }

    /// What escrow conservation says must hold; property tests assert it after every event.
    pub fn is_conserved(&self) -> bool {
        let pending: u64 = self.pending.values().sum();
        self.funded == self.held + pending + self.released_gross + self.clawed_back + self.refunded
    }

    pub fn pending_total(&self) -> u64 {
        self.pending.values().sum()
    }

    fn open_terms(&self) -> Result<EscrowTerms, EscrowError> {
        if self.closed {
            return Err(EscrowError::Closed);
        }
        self.terms.ok_or(EscrowError::NotFunded)
    }

    fn settle_all(&self, ctx: &CommandCtx<'_>, terms: EscrowTerms, out: &mut Vec<EscrowEvent>) {
        let month_index = ctx.now.month_index();
        let currency = terms.reward_per_replica.currency;
        let mut volume = ctx.facts.client_month_volume(terms.client, currency, month_index);
        let mut by_worker: BTreeMap<PartyId, u64> = BTreeMap::new();
        for ((_, w), amount) in &self.pending {
            *by_worker.entry(*w).or_default() += amount;
        }
        for (worker, gross) in by_worker {
            if gross == 0 {
                continue;
            }
            let gross = self.money(gross);
            let commission = ctx.facts.commission().commission(volume, gross);
            out.push(EscrowEvent::PendingReleased {
                worker,
                client: terms.client,
                gross,
                commission,
                month_index,
                volume_before: volume,
            });
            volume = volume.saturating_add(gross.minor_units);
        }
        for ((task, worker), amount) in &self.collateral {
            out.push(EscrowEvent::CollateralReturned { task: *task, worker: *worker, amount: self.money(*amount) });
        }
        if self.held > 0 {
            out.push(EscrowEvent::EscrowRefunded { client: terms.client, amount: self.money(self.held) });
        }
        out.push(EscrowEvent::EscrowClosed);
    }
}

impl Aggregate for Escrow {
    const TYPE: &'static str = "escrow";
    type Command = EscrowCommand;
    type Event = EscrowEvent;
    type Error = EscrowError;

    fn handle(&self, cmd: EscrowCommand, ctx: &CommandCtx<'_>) -> Result<Vec<EscrowEvent>, EscrowError> {
        if !ctx.actor.is_system() {
            return Err(EscrowError::NotTheSystem);
        }
        match cmd {
            EscrowCommand::Fund { terms, amount } => {
                if self.terms.is_some() {
                    return Err(if self.closed { EscrowError::Closed } else { EscrowError::AlreadyFunded });
                }
                if amount.currency != terms.reward_per_replica.currency {
                    return Err(EscrowError::WrongCurrency {
                        expected: terms.reward_per_replica.currency,
                        got: amount.currency,
                    });
                }
                if amount.is_zero() {
                    return Err(EscrowError::ZeroAmount);
                }
                let available = ctx.facts.available(terms.client, amount.currency);
                if available < amount.minor_units {
                    return Err(EscrowError::InsufficientFunds {
                        available: Money { minor_units: available, currency: amount.currency },
                        requested: amount,
                    });
                }
                Ok(vec![EscrowEvent::EscrowFunded { terms, amount }])
            }
            EscrowCommand::LockCollateral { task, worker, amount } => {
                let terms = self.open_terms()?;
                let currency = terms.reward_per_replica.currency;
                if amount.currency != currency {
                    return Err(EscrowError::WrongCurrency { expected: currency, got: amount.currency });
                }
                if amount.is_zero() {
                    return Ok(Vec::new());
                }
                if self.collateral.contains_key(&(task, worker)) {
                    return Err(EscrowError::CollateralAlreadyHeld { task });
                }
                let available = ctx.facts.available(worker, currency);
                if available < amount.minor_units {
                    return Err(EscrowError::InsufficientFunds { available: self.money(available), requested: amount });
                }
                Ok(vec![EscrowEvent::CollateralLocked { task, worker, amount }])
            }
            EscrowCommand::ReturnCollateral { task, worker } => {
                self.open_terms()?;
                Ok(match self.collateral.get(&(task, worker)) {
                    Some(amount) => vec![EscrowEvent::CollateralReturned { task, worker, amount: self.money(*amount) }],
                    None => Vec::new(),
                })
            }
            EscrowCommand::SlashCollateral { task, worker } => {
                let terms = self.open_terms()?;
                Ok(match self.collateral.get(&(task, worker)) {
                    Some(amount) => {
                        let held = self.money(*amount);
                        let slashed = held.slash_amount(terms.slash_pct);
                        let returned = self.money(held.minor_units - slashed.minor_units);
                        vec![EscrowEvent::CollateralSlashed { task, worker, client: terms.client, slashed, returned }]
                    }
                    None => Vec::new(),
                })
            }
            EscrowCommand::PayWorkers { task, workers } => {
                let terms = self.open_terms()?;
                let reward = terms.reward_per_replica;
                let mut held = self.held;
                let mut out = Vec::new();
                for worker in workers {
                    if self.paid.contains_key(&(task, worker)) {
                        return Err(EscrowError::AlreadyPaid { task });
                    }
                    held = held
                        .checked_sub(reward.minor_units)
                        .ok_or(EscrowError::EscrowExhausted { held: self.money(held), requested: reward })?;
                    out.push(EscrowEvent::WorkerPaymentPending { task, worker, amount: reward });
                }
                Ok(out)
            }
            EscrowCommand::ClawBack { task, workers } => {
                let terms = self.open_terms()?;
                Ok(workers
                    .into_iter()
                    .filter_map(|worker| {
                        let amount = *self.pending.get(&(task, worker))?;
                        (amount > 0).then(|| EscrowEvent::PaymentClawedBack {
                            task,
                            worker,
                            client: terms.client,
                            amount: self.money(amount),
                        })
                    })
                    .collect())
            }
            EscrowCommand::ApplyDisputeOutcome { task, workers, client_pct } => {
                let terms = self.open_terms()?;
                if client_pct > 100 {
                    return Err(EscrowError::Percentage);
                }
                let mut held = self.held;
                let mut out = Vec::new();
                for worker in workers {
                    match self.pending.get(&(task, worker)) {
                        // Already paid into pending: the client's share comes back from it.
                        Some(pending) => {
                            let back = self.money(*pending).percent_floor(client_pct);
                            if !back.is_zero() {
                                out.push(EscrowEvent::PaymentClawedBack {
                                    task,
                                    worker,
                                    client: terms.client,
                                    amount: back,
                                });
                            }
                        }
                        // Still in escrow: the workers' share moves to pending; the client's
                        // share stays and is refunded when the escrow settles.
                        None if !self.paid.contains_key(&(task, worker)) => {
                            let reward = terms.reward_per_replica;
                            let to_worker =
                                self.money(reward.minor_units - reward.percent_floor(client_pct).minor_units);
                            if !to_worker.is_zero() {
                                held = held.checked_sub(to_worker.minor_units).ok_or(EscrowError::EscrowExhausted {
                                    held: self.money(held),
                                    requested: to_worker,
                                })?;
                                out.push(EscrowEvent::WorkerPaymentPending { task, worker, amount: to_worker });
                            }
                        }
                        None => {}
                    }
                }
                Ok(out)
            }
            EscrowCommand::ScheduleRelease { not_before } => {
                self.open_terms()?;
                Ok(vec![EscrowEvent::ReleaseScheduled { not_before }])
            }
            EscrowCommand::Release => {
                let terms = self.open_terms()?;
                if let Some(not_before) = self.release_not_before
                    && ctx.now < not_before
                {
                    return Err(EscrowError::ReleaseBeforeWindowClosed { not_before });
                }
                let mut out = Vec::new();
                self.settle_all(ctx, terms, &mut out);
                Ok(out)
            }
            EscrowCommand::Refund => {
                if self.terms.is_none() {
                    // Cancelled before funding: nothing to give back.
                    return Ok(Vec::new());
                }
                let terms = self.open_terms()?;
                if self.pending_total() > 0 {
                    return Err(EscrowError::PendingPayments);
                }
                let mut out = Vec::new();
                self.settle_all(ctx, terms, &mut out);
                Ok(out)
            }
        }
    }

    fn apply(&mut self, event: &EscrowEvent) {
        match event {
            EscrowEvent::EscrowFunded { terms, amount } => {
                self.terms = Some(*terms);
                self.funded += amount.minor_units;
                self.held += amount.minor_units;
            }
            EscrowEvent::CollateralLocked { task, worker, amount } => {
                self.collateral.insert((*task, *worker), amount.minor_units);
            }
            EscrowEvent::CollateralReturned { task, worker, .. }
            | EscrowEvent::CollateralSlashed { task, worker, .. } => {
                self.collateral.remove(&(*task, *worker));
            }
            EscrowEvent::WorkerPaymentPending { task, worker, amount } => {
                self.held -= amount.minor_units;
                *self.pending.entry((*task, *worker)).or_default() += amount.minor_units;
                *self.paid.entry((*task, *worker)).or_default() += amount.minor_units;
            }
            EscrowEvent::PaymentClawedBack { task, worker, amount, .. } => {
                if let Some(p) = self.pending.get_mut(&(*task, *worker)) {
                    *p -= amount.minor_units;
                    if *p == 0 {
                        self.pending.remove(&(*task, *worker));
                    }
                }
                self.clawed_back += amount.minor_units;
            }
            EscrowEvent::ReleaseScheduled { not_before } => self.release_not_before = Some(*not_before),
            EscrowEvent::PendingReleased { worker, gross, commission, .. } => {
                self.pending.retain(|(_, w), _| w != worker);
                self.released_gross += gross.minor_units;
                self.commission += commission.minor_units;
            }
            EscrowEvent::EscrowRefunded { amount, .. } => {
                self.held -= amount.minor_units;
                self.refunded += amount.minor_units;
            }
            EscrowEvent::EscrowClosed => self.closed = true,
        }
    }
}

/// Postings need the job id, which the events of one escrow stream do not repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowEventOf<'a> {
    pub job: JobId,
    pub event: &'a EscrowEvent,
}

impl HasPostings for EscrowEventOf<'_> {
    fn postings(&self) -> Vec<Posting> {
        escrow_postings(self.job, self.event)
    }
}

#[cfg(test)]
mod tests;
