-- The write model's own tables, beside the event store's (event-store/migrations).
-- Both are rebuildable from the event log except api_keys, which are not events.

-- API keys: only a SHA-256 of the secret is stored. A key is `dscm_<key_id>_<secret>`.
CREATE TABLE api_keys (
    key_id      TEXT        NOT NULL,
    secret_hash BYTEA       NOT NULL CHECK (length(secret_hash) = 32),
    party_id    UUID        NOT NULL,
    role        TEXT        NOT NULL CHECK (role IN ('client', 'worker', 'arbiter', 'auditor', 'finance', 'admin')),
    label       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ NULL,
    CONSTRAINT api_keys_pkey PRIMARY KEY (key_id)
);

-- Ledger balances, updated in the same transaction as the events whose postings they sum
-- (docs/adr/0004). Decisions read them as facts (FOR UPDATE); the CHECK is the backstop.
CREATE TABLE ledger_balances (
    account  TEXT   NOT NULL,
    currency TEXT   NOT NULL,
    balance  BIGINT NOT NULL,
    CONSTRAINT ledger_balances_pkey PRIMARY KEY (account, currency),
    CONSTRAINT ledger_balances_non_negative CHECK (balance >= 0 OR account LIKE 'provider_clearing:%')
);

-- A client's settled gross volume per calendar month (UTC): the commission tier fact.
CREATE TABLE client_month_volume (
    client_id   UUID   NOT NULL,
    currency    TEXT   NOT NULL,
    month_index BIGINT NOT NULL,
    volume      BIGINT NOT NULL CHECK (volume >= 0),
    CONSTRAINT client_month_volume_pkey PRIMARY KEY (client_id, currency, month_index)
);
