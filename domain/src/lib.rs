//! The marketplace's rules, with no IO.
//!
//! - [`job`], [`escrow`], [`challenge`], [`dispute`], [`worker`] and [`funds`] are the
//!   aggregates: `handle(&self, cmd, &ctx) -> Result<Vec<Event>, Error>` decides,
//!   `apply(&mut self, &event)` folds.
//! - [`process::react`] says which commands each event requires of other aggregates;
//!   [`market::Marketplace`] runs a command and its reactions as one unit of work.
//! - [`money`] and [`ledger`]: integer money and the double-entry postings every money event
//!   makes, folded into balances by [`ledger::Ledger`].
//! - [`ctx`]: time, actor and facts a decision may consult. [`time`]: instants, never a clock.
//!
//! Nothing here performs IO, spawns, sleeps or reads a clock; `tests/no_io.rs` fails if an IO
//! crate enters this crate's dependency graph.

pub mod aggregate;
pub mod challenge;
pub mod ctx;
pub mod deadlines;
pub mod digest;
pub mod dispute;
pub mod errors;
pub mod escrow;
pub mod funds;
pub mod ids;
pub mod job;
pub mod ledger;
pub mod market;
pub mod money;
pub mod policy;
pub mod process;
pub mod time;
pub mod worker;

pub use aggregate::{Aggregate, DomainEvent};
pub use ctx::{Actor, CommandCtx, Facts, Role};
pub use market::{Command, Event, MarketError, Marketplace, StreamId};
pub use money::{Currency, Money};
pub use time::Timestamp;
