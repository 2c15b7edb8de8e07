//! The shape every aggregate has: commands in, events out, state folded from events.
//!
//! `handle` decides and cannot change state; `apply` changes state and cannot decide (it has
//! no error path). A rejected command returns an error and no events, so it changes nothing.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ctx::CommandCtx;

/// An event of one aggregate. `event_type` and `event_version` are stored beside the payload
/// and are frozen by the snapshot test in `domain/tests/event_snapshots.rs`.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq {
    fn event_type(&self) -> &'static str;
    fn event_version(&self) -> u32 {
        1
    }
}

pub trait Aggregate: Default + Clone + std::fmt::Debug {
    /// The stream name stored with every event (`job`, `escrow`, …).
    const TYPE: &'static str;
    type Command: std::fmt::Debug + Clone;
    type Event: DomainEvent;
    type Error: std::error::Error + PartialEq + Clone;

    fn handle(&self, cmd: Self::Command, ctx: &CommandCtx<'_>) -> Result<Vec<Self::Event>, Self::Error>;
    fn apply(&mut self, event: &Self::Event);

    /// Rebuild state from a history.
    fn from_events<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }
}
