//! Money entering and leaving the platform: captured deposits and payouts.
//!
//! A [`Deposit`] is keyed by the provider's own reference (see
//! [`crate::ids::DepositId::for_external_reference`]), so recording the same capture twice is a
//! no-op, and recording a different capture under the same reference is refused. A [`Payout`]
//! takes money from a party's available balance into flight, then either completes (it left)
//! or fails (it comes back).

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainEvent};
use crate::ctx::{CommandCtx, Role};
use crate::ids::{DepositId, PartyId};
use crate::ledger::{HasPostings, LedgerAccount, Posting, Provider};
use crate::money::Money;

pub const EXTERNAL_REF_LEN_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DepositCommand {
    RecordCaptured { party: PartyId, amount: Money, provider: Provider, external_ref: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DepositEvent {
    DepositCaptured { party: PartyId, amount: Money, provider: Provider, external_ref: String },
}

impl DomainEvent for DepositEvent {
    fn event_type(&self) -> &'static str {
        "DepositCaptured"
    }
}

impl HasPostings for DepositEvent {
    fn postings(&self) -> Vec<Posting> {
        let DepositEvent::DepositCaptured { party, amount, provider, .. } = self;
        vec![Posting::new(
            LedgerAccount::ProviderClearing { provider: *provider },
            LedgerAccount::Available { party: *party },
            *amount,
        )]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepositError {
    #[error("only finance or admin record captured deposits")]
    NotFinance,
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("amount {0} is above the maximum of {max} minor units", max = Money::MAX_MINOR_UNITS)]
    AmountTooLarge(u64),
    #[error("external reference must be 1..={max} printable characters", max = EXTERNAL_REF_LEN_MAX)]
    ExternalRef,
    #[error("reference {external_ref:?} was already recorded with different details")]
    ReferenceReused { external_ref: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deposit {
    pub captured: Option<DepositEvent>,
}

impl Aggregate for Deposit {
    const TYPE: &'static str = "deposit";
    type Command = DepositCommand;
    type Event = DepositEvent;
    type Error = DepositError;

    fn handle(&self, cmd: DepositCommand, ctx: &CommandCtx<'_>) -> Result<Vec<DepositEvent>, DepositError> {
        if !matches!(ctx.actor.role, Role::Finance | Role::Admin | Role::System) {
            return Err(DepositError::NotFinance);
        }
        let DepositCommand::RecordCaptured { party, amount, provider, external_ref } = cmd;
        if amount.is_zero() {
            return Err(DepositError::ZeroAmount);
        }
        // Money above the maximum would break the bound every sum of amounts relies on.
        if amount.minor_units > Money::MAX_MINOR_UNITS {
            return Err(DepositError::AmountTooLarge(amount.minor_units));
        }
        if external_ref.is_empty()
            || external_ref.len() > EXTERNAL_REF_LEN_MAX
            || external_ref.chars().any(char::is_control)
        {
            return Err(DepositError::ExternalRef);
        }
        let event = DepositEvent::DepositCaptured { party, amount, provider, external_ref };
        match &self.captured {
            None => Ok(vec![event]),
            Some(existing) if *existing == event => Ok(Vec::new()),
            Some(_) => {
                let DepositEvent::DepositCaptured { external_ref, .. } = event;
                Err(DepositError::ReferenceReused { external_ref })
            }
        }
    }

    fn apply(&mut self, event: &DepositEvent) {
        self.captured = Some(event.clone());
    }
}

impl DepositId {
    pub fn of(provider: Provider, external_ref: &str) -> DepositId {
        DepositId::for_external_reference(provider, external_ref)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayoutCommand {
    /// The party asks for its available money to be sent out.
    Request {
        amount: Money,
        provider: Provider,
    },
    Complete {
        provider_ref: String,
    },
    Fail {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PayoutEvent {
    PayoutRequested { party: PartyId, amount: Money, provider: Provider },
    PayoutCompleted { party: PartyId, amount: Money, provider: Provider, provider_ref: String },
    PayoutFailed { party: PartyId, amount: Money, reason: String },
}

impl DomainEvent for PayoutEvent {
    fn event_type(&self) -> &'static str {
        match self {
            PayoutEvent::PayoutRequested { .. } => "PayoutRequested",
            PayoutEvent::PayoutCompleted { .. } => "PayoutCompleted",
            PayoutEvent::PayoutFailed { .. } => "PayoutFailed",
        }
    }
}

impl HasPostings for PayoutEvent {
    fn postings(&self) -> Vec<Posting> {
        use LedgerAccount as A;
        match self {
            PayoutEvent::PayoutRequested { party, amount, .. } => {
                vec![Posting::new(A::Available { party: *party }, A::PayoutsInFlight, *amount)]
            }
            PayoutEvent::PayoutCompleted { amount, provider, .. } => {
                vec![Posting::new(A::PayoutsInFlight, A::ProviderClearing { provider: *provider }, *amount)]
            }
            PayoutEvent::PayoutFailed { party, amount, .. } => {
                vec![Posting::new(A::PayoutsInFlight, A::Available { party: *party }, *amount)]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayoutError {
    #[error("payout already requested")]
    AlreadyRequested,
    #[error("no such payout")]
    NotFound,
    #[error("payout already {0}")]
    AlreadyFinished(&'static str),
    #[error("only clients and workers withdraw their own money")]
    NotAllowed,
    #[error("only the platform or finance confirm payouts")]
    NotFinance,
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("amount {0} is above the maximum of {max} minor units", max = Money::MAX_MINOR_UNITS)]
    AmountTooLarge(u64),
    #[error("insufficient funds: available {available}, requested {requested}")]
    InsufficientFunds { available: Money, requested: Money },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payout {
    pub requested: Option<(PartyId, Money, Provider)>,
    pub finished: Option<&'static str>,
}

impl Aggregate for Payout {
    const TYPE: &'static str = "payout";
    type Command = PayoutCommand;
    type Event = PayoutEvent;
    type Error = PayoutError;

    fn handle(&self, cmd: PayoutCommand, ctx: &CommandCtx<'_>) -> Result<Vec<PayoutEvent>, PayoutError> {
        match cmd {
            PayoutCommand::Request { amount, provider } => {
                if self.requested.is_some() {
                    return Err(PayoutError::AlreadyRequested);
                }
                if !matches!(ctx.actor.role, Role::Client | Role::Worker) {
                    return Err(PayoutError::NotAllowed);
                }
                if amount.is_zero() {
                    return Err(PayoutError::ZeroAmount);
                }
                // A balance may exceed one Money's maximum (many deposits); one amount may not.
                if amount.minor_units > Money::MAX_MINOR_UNITS {
                    return Err(PayoutError::AmountTooLarge(amount.minor_units));
                }
                let available = ctx.facts.available(ctx.actor.party, amount.currency);
                if available < amount.minor_units {
                    return Err(PayoutError::InsufficientFunds {
                        available: Money { minor_units: available, currency: amount.currency },
                        requested: amount,
                    });
                }
                Ok(vec![PayoutEvent::PayoutRequested { party: ctx.actor.party, amount, provider }])
            }
            PayoutCommand::Complete { provider_ref } => {
                let (party, amount, provider) = self.open(ctx)?;
                Ok(vec![PayoutEvent::PayoutCompleted { party, amount, provider, provider_ref }])
            }
            PayoutCommand::Fail { reason } => {
                let (party, amount, _) = self.open(ctx)?;
                Ok(vec![PayoutEvent::PayoutFailed { party, amount, reason }])
            }
        }
    }

    fn apply(&mut self, event: &PayoutEvent) {
        match event {
            PayoutEvent::PayoutRequested { party, amount, provider } => {
                self.requested = Some((*party, *amount, *provider))
            }
            PayoutEvent::PayoutCompleted { .. } => self.finished = Some("completed"),
            PayoutEvent::PayoutFailed { .. } => self.finished = Some("failed"),
        }
    }
}

impl Payout {
    fn open(&self, ctx: &CommandCtx<'_>) -> Result<(PartyId, Money, Provider), PayoutError> {
        if !matches!(ctx.actor.role, Role::System | Role::Finance | Role::Admin) {
            return Err(PayoutError::NotFinance);
        }
        let requested = self.requested.ok_or(PayoutError::NotFound)?;
        if let Some(done) = self.finished {
            return Err(PayoutError::AlreadyFinished(done));
        }
        Ok(requested)
    }
}
