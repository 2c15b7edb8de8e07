//! The double-entry view of money: every money event maps to postings between named
//! accounts, and a pure fold turns any event stream into balances.
//!
//! A posting moves an amount `from` one account `to` another, so per currency the balances
//! always sum to zero. Provider clearing accounts are the outside world: they go negative by
//! what was captured and come back up by what was paid out. Every other account must stay at
//! or above zero, and the sum over them equals captured deposits minus completed payouts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{ChallengeId, JobId, PartyId};
use crate::money::{Currency, Money};

/// The payment providers money enters and leaves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Stripe,
    Yookassa,
    Adyen,
    /// Recorded by finance by hand (bank transfer), until the provider integrations exist.
    Manual,
}

impl Provider {
    pub fn code(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Yookassa => "yookassa",
            Provider::Adyen => "adyen",
            Provider::Manual => "manual",
        }
    }
}

/// The named accounts of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerAccount {
    /// What a party may spend: a client's available balance, or a worker's withdrawable one.
    Available { party: PartyId },
    /// Money a client committed to one job, not yet earned by anyone.
    JobEscrow { job: JobId },
    /// A worker's collateral, held while its results can still be found wrong.
    WorkerCollateral { worker: PartyId },
    /// Earned by a worker, waiting for the challenge window to close.
    WorkerPending { worker: PartyId },
    /// A challenger's bond, held until the challenge is resolved.
    ChallengeBond { challenge: ChallengeId },
    /// Payouts sent to a provider and not yet confirmed.
    PayoutsInFlight,
    /// The platform's commission and forfeited bonds.
    PlatformFees,
    /// The outside world, per provider: negative by what was captured and not paid out.
    ProviderClearing { provider: Provider },
}

impl LedgerAccount {
    /// Clearing accounts mirror money outside the platform; only they may go below zero.
    pub fn may_go_negative(&self) -> bool {
        matches!(self, LedgerAccount::ProviderClearing { .. })
    }
}

impl fmt::Display for LedgerAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerAccount::Available { party } => write!(f, "available:{party}"),
            LedgerAccount::JobEscrow { job } => write!(f, "job_escrow:{job}"),
            LedgerAccount::WorkerCollateral { worker } => write!(f, "worker_collateral:{worker}"),
            LedgerAccount::WorkerPending { worker } => write!(f, "worker_pending:{worker}"),
            LedgerAccount::ChallengeBond { challenge } => write!(f, "challenge_bond:{challenge}"),
            LedgerAccount::PayoutsInFlight => f.write_str("payouts_in_flight"),
            LedgerAccount::PlatformFees => f.write_str("platform_fees"),
            LedgerAccount::ProviderClearing { provider } => write!(f, "provider_clearing:{}", provider.code()),
        }
    }
}

/// One movement of money between two accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub from: LedgerAccount,
    pub to: LedgerAccount,
    pub amount: Money,
}

impl Posting {
    pub fn new(from: LedgerAccount, to: LedgerAccount, amount: Money) -> Posting {
        Posting { from, to, amount }
    }
}

/// Implemented by every event enum: the postings the event makes (none for most events).
pub trait HasPostings {
    fn postings(&self) -> Vec<Posting>;
}

/// A violated ledger invariant, as reported by [`Ledger::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerViolation {
    #[error("{account} is negative in {currency}: {balance}")]
    NegativeBalance { account: LedgerAccount, currency: Currency, balance: i128 },
    #[error("postings in {currency} sum to {sum}, not zero")]
    Unbalanced { currency: Currency, sum: i128 },
}

/// Balances per (account, currency), folded from postings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    balances: BTreeMap<(LedgerAccount, Currency), i128>,
}

impl Ledger {
    pub fn post(&mut self, posting: &Posting) {
        let amount = i128::from(posting.amount.minor_units);
        let currency = posting.amount.currency;
        *self.balances.entry((posting.from, currency)).or_default() -= amount;
        *self.balances.entry((posting.to, currency)).or_default() += amount;
    }

    /// Start an account at a known balance (a partial ledger loaded from storage).
    pub fn set_opening(&mut self, account: LedgerAccount, currency: Currency, balance: i128) {
        self.balances.insert((account, currency), balance);
    }

    /// The pure fold: balances after every posting of every event.
    pub fn from_events<'a, E: HasPostings + 'a>(events: impl IntoIterator<Item = &'a E>) -> Ledger {
        let mut ledger = Ledger::default();
        for event in events {
            for posting in event.postings() {
                ledger.post(&posting);
            }
        }
        ledger
    }

    pub fn balance(&self, account: LedgerAccount, currency: Currency) -> i128 {
        self.balances.get(&(account, currency)).copied().unwrap_or(0)
    }

    /// What `party` may spend (never negative in a checked ledger).
    pub fn available(&self, party: PartyId, currency: Currency) -> u64 {
        u64::try_from(self.balance(LedgerAccount::Available { party }, currency)).unwrap_or(0)
    }

    pub fn balances(&self) -> impl Iterator<Item = (LedgerAccount, Currency, i128)> + '_ {
        self.balances.iter().map(|((a, c), b)| (*a, *c, *b))
    }

    /// Per currency: the sum over all accounts (must be zero).
    pub fn sum(&self, currency: Currency) -> i128 {
        self.balances.iter().filter(|((_, c), _)| *c == currency).map(|(_, b)| b).sum()
    }

    /// Per currency: what the platform holds (every account but the clearing ones).
    pub fn held_by_platform(&self, currency: Currency) -> i128 {
        self.balances.iter().filter(|((a, c), _)| *c == currency && !a.may_go_negative()).map(|(_, b)| b).sum()
    }

    /// Checks the invariants: per currency the balances sum to zero, and no account but a
    /// provider clearing account is negative.
    pub fn check(&self) -> Result<(), LedgerViolation> {
        for currency in Currency::ALL {
            let sum = self.sum(currency);
            if sum != 0 {
                return Err(LedgerViolation::Unbalanced { currency, sum });
            }
        }
        for ((account, currency), balance) in &self.balances {
            if *balance < 0 && !account.may_go_negative() {
                return Err(LedgerViolation::NegativeBalance {
                    account: *account,
                    currency: *currency,
                    balance: *balance,
                });
            }
        }
        Ok(())
    }
}
