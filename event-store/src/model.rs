//! The data that goes in and comes out: new events grouped by aggregate into a [`Commit`], and
//! [`StoredEvent`]s with every column of the `events` table.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::hash::Hash;

/// Who and what caused an event; stored as JSON in `events.metadata` and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The authenticated principal, or a system actor such as `"system:scheduler"`.
    pub actor: String,
    /// The command that produced the events.
    pub command_id: Uuid,
    /// The first message of the conversation (the original request).
    pub correlation_id: Uuid,
    /// The message that directly caused this one (a command, or an event for a process manager).
    pub causation_id: Uuid,
}

/// An event to append; the store assigns its sequence, position and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    /// Stable name, past tense, e.g. `"EscrowHeld"`.
    pub event_type: String,
    /// Starts at 1; bumped when the payload's shape changes.
    pub event_version: i32,
    pub payload: Value,
}

/// Events for one aggregate, with what the caller last saw of it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The last sequence the caller saw; 0 for a new aggregate. The new events get the
    /// sequences that follow it.
    pub expected_sequence: i64,
    /// The hash of the event at `expected_sequence`, if the caller has it. The store reads the
    /// aggregate's last event in the transaction anyway (to refuse a sequence gap) and treats a
    /// different hash as a conflict, so a stale or corrupt cache cannot break the chain.
    pub expected_last_hash: Option<Hash>,
    /// At least one.
    pub events: Vec<NewEvent>,
}

/// The answer to a command, stored with its events so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// E.g. the endpoint or the tenant: keys are unique per scope.
    pub scope: String,
    /// The client's idempotency key.
    pub key: String,
    /// A hash of the request, to tell a retry from a different request reusing the key.
    pub request_hash: Vec<u8>,
    pub response_status: u16,
    pub response_body: Vec<u8>,
}

/// An idempotency record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdempotency {
    pub record: IdempotencyRecord,
    /// The `recorded_at` of the commit that stored it.
    pub created_at_unix_micros: i64,
}

/// One transaction's worth of events: several aggregates, all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// At least one, each aggregate at most once.
    pub streams: Vec<StreamAppend>,
    /// Shared by every event of the commit.
    pub metadata: EventMetadata,
    /// Shared by every event of the commit; from the caller's clock, unix microseconds (UTC).
    pub recorded_at_unix_micros: i64,
    pub idempotency: Option<IdempotencyRecord>,
}

impl Commit {
    /// The number of events across all streams.
    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

/// A row of the `events` table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global, gapless, in commit order, from 1.
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Per aggregate, gapless, from 1.
    pub sequence: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: i32,
    /// As stored in `jsonb` (numbers may be normalised, see [`crate::hash`]).
    pub payload: Value,
    pub metadata: EventMetadata,
    pub recorded_at_unix_micros: i64,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// What a successful commit wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// In position order (the order of the commit's streams, then of their events).
    pub events: Vec<StoredEvent>,
    /// The position of the commit's last event: the log's head once the transaction commits.
    pub last_position: i64,
}
