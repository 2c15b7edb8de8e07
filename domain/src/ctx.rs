//! What a command is decided with: the time, who asks, and facts fetched before the call.
//!
//! Aggregates see only their own history. What they need to know of the rest of the world
//! (a party's available balance, a worker's track record, a random draw, the commission
//! schedule) comes in through [`Facts`], read by the caller before `handle` runs. A service
//! reads facts inside the same transaction that will append the events; the in-memory
//! [`crate::market::Marketplace`] reads them from its own ledger.

use serde::{Deserialize, Serialize};

use crate::ids::PartyId;
use crate::money::{Currency, Money};
use crate::time::Timestamp;

/// The roles an API key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Worker,
    Arbiter,
    Auditor,
    Finance,
    Admin,
    /// The platform itself: the deadline scheduler and the reactions between aggregates.
    System,
}

impl Role {
    pub const HUMAN: [Role; 6] = [Role::Client, Role::Worker, Role::Arbiter, Role::Auditor, Role::Finance, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Arbiter => "arbiter",
            Role::Auditor => "auditor",
            Role::Finance => "finance",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }
}

/// Who issues a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub party: PartyId,
    pub role: Role,
}

impl Actor {
    /// The platform's own actor (a fixed, well-known party id).
    pub const SYSTEM: Actor = Actor { party: PartyId(uuid::Uuid::nil()), role: Role::System };

    pub fn is_system(&self) -> bool {
        self.role == Role::System
    }
}

/// The commission tiers: 8 % of a client's calendar-month volume up to the threshold of its
/// currency, 12 % above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommissionSchedule {
    pub low_pct: u8,
    pub high_pct: u8,
    /// Per currency: the monthly volume (minor units) up to which `low_pct` applies.
    pub thresholds: Vec<Money>,
}

impl Default for CommissionSchedule {
    fn default() -> Self {
        CommissionSchedule {
            low_pct: 8,
            high_pct: 12,
            thresholds: vec![
                Money { minor_units: 1_000_000, currency: Currency::Usd }, // USD 10,000
                Money { minor_units: 1_000_000, currency: Currency::Eur }, // EUR 10,000
                Money { minor_units: 100_000_000, currency: Currency::Rub }, // RUB 1,000,000
                Money { minor_units: 7_000_000, currency: Currency::Cny }, // CNY 70,000
            ],
        }
    }
}

impl CommissionSchedule {
    pub fn threshold(&self, currency: Currency) -> u64 {
        self.thresholds.iter().find(|m| m.currency == currency).map_or(0, |m| m.minor_units)
    }

    /// Commission on `gross` when the client has already settled `volume_before` this month:
    /// the part of `gross` below the threshold at the low rate, the rest at the high rate,
    /// each rounded down (in the worker's favour).
    pub fn commission(&self, volume_before: u64, gross: Money) -> Money {
        let threshold = self.threshold(gross.currency);
        let room = threshold.saturating_sub(volume_before);
        let low_part = gross.minor_units.min(room);
        let high_part = gross.minor_units - low_part;
        let low = u128::from(low_part) * u128::from(self.low_pct) / 100;
        let high = u128::from(high_part) * u128::from(self.high_pct) / 100;
        // Both terms are below gross (rates <= 100 %), so the sum fits in u64.
        Money { minor_units: (low + high) as u64, currency: gross.currency }
    }
}

/// Facts about the rest of the world that a decision needs. Unknown facts must be answered
/// conservatively (no balance, no track record), never optimistically.
pub trait Facts {
    /// What `party` may spend now in `currency` (its available ledger balance).
    fn available(&self, party: PartyId, currency: Currency) -> u64;
    /// A worker's count of consecutive valid results (adaptive replication).
    fn consecutive_valid(&self, worker: PartyId) -> u32;
    /// What `client` has settled so far in the calendar month `month_index`, in `currency`.
    fn client_month_volume(&self, client: PartyId, currency: Currency, month_index: i64) -> u64;
    /// A uniformly random 64-bit draw, fixed for this command (so the decision is replayable).
    fn random_u64(&self) -> u64;
    fn commission(&self) -> &CommissionSchedule;
}

/// Facts that know nothing: no balances, no history, a zero draw. For commands that need none.
#[derive(Debug, Default)]
pub struct NoFacts {
    pub schedule: CommissionSchedule,
}

impl Facts for NoFacts {
    fn available(&self, _: PartyId, _: Currency) -> u64 {
        0
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

/// Everything `handle` may consult besides the aggregate's own state.
#[derive(Clone, Copy)]
pub struct CommandCtx<'a> {
    pub now: Timestamp,
    pub actor: Actor,
    pub facts: &'a dyn Facts,
}

impl std::fmt::Debug for CommandCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCtx").field("now", &self.now).field("actor", &self.actor).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: u64) -> Money {
        Money { minor_units: minor, currency: Currency::Usd }
    }

    #[test]
    fn commission_is_eight_percent_below_the_monthly_threshold() {
        let s = CommissionSchedule::default();
        assert_eq!(s.commission(0, usd(10_000)), usd(800));
    }

    #[test]
    fn commission_is_twelve_percent_above_the_monthly_threshold() {
        let s = CommissionSchedule::default();
        assert_eq!(s.commission(1_000_000, usd(10_000)), usd(1_200));
        assert_eq!(s.commission(5_000_000, usd(10_000)), usd(1_200));
    }

    #[test]
    fn commission_splits_an_amount_that_crosses_the_threshold() {
        let s = CommissionSchedule::default();
        // 5,000 below the threshold at 8 % and 5,000 above at 12 %.
        assert_eq!(s.commission(995_000, usd(10_000)), usd(400 + 600));
    }

    #[test]
    fn commission_rounds_down() {
        let s = CommissionSchedule::default();
        assert_eq!(s.commission(0, usd(12)), usd(0));
        assert_eq!(s.commission(0, usd(13)), usd(1));
    }
}
