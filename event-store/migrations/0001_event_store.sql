-- The event store: one gapless, commit-ordered log of JSON events, hash-chained per aggregate,
-- with an outbox and idempotency records written in the same transaction.
-- See event-store/src/lib.rs and docs/adr/0002-gap-safe-global-order.md.

CREATE TABLE events (
    -- Global order: assigned from event_log_head inside the appending transaction, so positions
    -- are gapless and follow commit order.
    position       BIGINT      NOT NULL CHECK (position > 0),
    aggregate_type TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    -- Per aggregate, 1, 2, 3, ...
    sequence       BIGINT      NOT NULL CHECK (sequence > 0),
    event_id       UUID        NOT NULL,
    event_type     TEXT        NOT NULL,
    event_version  INT         NOT NULL CHECK (event_version > 0),
    payload        JSONB       NOT NULL,
    metadata       JSONB       NOT NULL,
    -- Microsecond precision; the hash covers this value as unix microseconds.
    recorded_at    TIMESTAMPTZ NOT NULL,
    -- SHA-256 of the previous event of the same aggregate; 32 zero bytes for sequence 1.
    prev_hash      BYTEA       NOT NULL CHECK (length(prev_hash) = 32),
    hash           BYTEA       NOT NULL CHECK (length(hash) = 32),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- Optimistic concurrency: two writers that saw the same last sequence cannot both commit.
    -- The code maps a violation of this constraint, by name, to AppendError::Conflict.
    CONSTRAINT events_aggregate_sequence_key UNIQUE (aggregate_type, aggregate_id, sequence)
);

-- The single row that hands out global positions. Its row lock is held from the moment a
-- transaction takes positions until it commits or rolls back.
CREATE TABLE event_log_head (
    id       BOOLEAN NOT NULL DEFAULT true CHECK (id),
    position BIGINT  NOT NULL CHECK (position >= 0),
    CONSTRAINT event_log_head_pkey PRIMARY KEY (id)
);
INSERT INTO event_log_head (id, position) VALUES (true, 0);

CREATE TABLE outbox (
    position       BIGINT      NOT NULL REFERENCES events (position),
    aggregate_type TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    published_at   TIMESTAMPTZ NULL,
    CONSTRAINT outbox_pkey PRIMARY KEY (position)
);
CREATE INDEX outbox_unpublished_idx ON outbox (position) WHERE published_at IS NULL;

CREATE TABLE idempotency (
    scope           TEXT        NOT NULL,
    key             TEXT        NOT NULL,
    request_hash    BYTEA       NOT NULL,
    response_status INT         NOT NULL,
    response_body   BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    -- The code maps a violation of this constraint, by name, to DuplicateIdempotencyKey.
    CONSTRAINT idempotency_pkey PRIMARY KEY (scope, key)
);
