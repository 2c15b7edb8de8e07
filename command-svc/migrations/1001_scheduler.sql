-- The durable scheduler: deadlines projected from the event log, and the positions of the
-- log followers (the deadline projection, the payout process manager).

CREATE TABLE log_followers (
    name     TEXT   NOT NULL,
    position BIGINT NOT NULL CHECK (position >= 0),
    CONSTRAINT log_followers_pkey PRIMARY KEY (name)
);

CREATE TABLE deadlines (
    -- Stable per purpose, e.g. job:<id>:window, claim:<job>:<task>:<worker> (domain::deadlines).
    deadline_id       TEXT    NOT NULL,
    -- Absolute time, unix milliseconds; NULL while parked without a time.
    due_at_ms         BIGINT  NULL,
    parked            BOOLEAN NOT NULL,
    -- The domain command to issue (domain::Command as JSON).
    command           JSONB   NOT NULL,
    -- The log position of the event that armed it: with the id, the idempotency key.
    armed_at_position BIGINT  NOT NULL,
    attempts          INT     NOT NULL DEFAULT 0,
    retry_at_ms       BIGINT  NULL,
    last_error        TEXT    NULL,
    CONSTRAINT deadlines_pkey PRIMARY KEY (deadline_id)
);
CREATE INDEX deadlines_due_idx ON deadlines (due_at_ms) WHERE NOT parked;
