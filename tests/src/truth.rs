//! What the read side is compared with: the event store (the only source of truth), the fold of
//! the log with the domain's own rules (`domain::Marketplace::replay`, which also checks the
//! ledger's invariants: the whole ledger), and the write side's `ledger_balances` table (only
//! the balances decisions read as facts: `available:<party>`, ADR 0004).

use std::collections::BTreeMap;

use domain::ids::{ChallengeId, DepositId, DisputeId, JobId, PartyId, PayoutId};
use domain::{Event, Marketplace, StreamId};
use event_store::StoredEvent;
use serde_json::Value;
use sqlx::{PgPool, Row};

use crate::api::Api;

/// Balances keyed by (account, currency), in minor units.
pub type Balances = BTreeMap<(String, String), i128>;

/// The whole log of the event store.
pub async fn stored_log(pool: &PgPool) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &StoredEvent| e.position);
        let page = event_store::read_log(pool, after, 10_000).await.expect("read_log");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// The stream an event store row belongs to.
pub fn stream_of(e: &StoredEvent) -> StreamId {
    let id: uuid::Uuid = e.aggregate_id.parse().expect("aggregate ids are UUIDs");
    match e.aggregate_type.as_str() {
        "job" => StreamId::Job(JobId(id)),
        "escrow" => StreamId::Escrow(JobId(id)),
        "challenge" => StreamId::Challenge(ChallengeId(id)),
        "dispute" => StreamId::Dispute(DisputeId(id)),
        "worker" => StreamId::Worker(PartyId(id)),
        "deposit" => StreamId::Deposit(DepositId(id)),
        "payout" => StreamId::Payout(PayoutId(id)),
        other => panic!("unknown aggregate type {other}"),
    }
}

/// The log as domain events.
pub async fn domain_log(pool: &PgPool) -> Vec<Event> {
    stored_log(pool)
        .await
        .into_iter()
        .map(|e| Event::from_stored(stream_of(&e), e.payload).expect("every stored event parses"))
        .collect()
}

/// The fold of the whole log; panics if the ledger's invariants or an escrow's conservation
/// do not hold, or a hash chain is broken.
pub async fn fold(pool: &PgPool) -> Marketplace {
    let m = Marketplace::replay(0, &domain_log(pool).await);
    m.ledger.check().expect("ledger invariants of the fold");
    for (job, escrow) in &m.escrows {
        assert!(escrow.is_conserved(), "escrow {job} not conserved: {escrow:?}");
    }
    let report = event_store::verify_all(pool).await.expect("verify");
    assert!(report.is_intact(), "hash chain broken: {report:?}");
    m
}

/// The fold's non-zero balances.
pub fn fold_balances(m: &Marketplace) -> Balances {
    m.ledger.balances().filter(|(_, _, b)| *b != 0).map(|(a, c, b)| ((a.to_string(), c.code().to_owned()), b)).collect()
}

/// The `available:<party>` accounts of a balance map: what `ledger_balances` holds.
pub fn available_only(balances: &Balances) -> Balances {
    balances.iter().filter(|((a, _), _)| a.starts_with("available:")).map(|(k, v)| (k.clone(), *v)).collect()
}

/// command-svc's `ledger_balances`, non-zero rows.
pub async fn ledger_table(pool: &PgPool) -> Balances {
    let rows = sqlx::query("SELECT account, currency, balance FROM ledger_balances WHERE balance <> 0")
        .fetch_all(pool)
        .await
        .expect("ledger_balances");
    rows.into_iter().map(|r| ((r.get("account"), r.get("currency")), i128::from(r.get::<i64, _>("balance")))).collect()
}

/// Balances as the read API shows them to `key` (every page of `GET /v1/balances`), non-zero.
pub async fn read_balances(reads: &Api, key: &str, query: &str) -> Balances {
    reads
        .read_all(key, "/v1/balances", query)
        .await
        .into_iter()
        .map(|item| {
            let account = item["account"].as_str().expect("account").to_owned();
            let currency = item["currency"].as_str().expect("currency").to_owned();
            let balance = item["balance"]["minor_units"].as_i64().unwrap_or_else(|| panic!("balance in {item}"));
            ((account, currency), i128::from(balance))
        })
        .filter(|(_, b)| *b != 0)
        .collect()
}

/// `available:<party>` in EUR, from a balance map.
pub fn available(balances: &Balances, party: &str) -> i128 {
    balances.get(&(format!("available:{party}"), "EUR".to_owned())).copied().unwrap_or(0)
}

/// The fields of a stored event that the read API's history must repeat.
pub fn history_key(e: &StoredEvent) -> (i64, i64, String, String, String, String) {
    (
        e.position,
        e.sequence,
        e.event_id.to_string(),
        e.event_type.clone(),
        hex::encode(e.hash),
        hex::encode(e.prev_hash),
    )
}

/// The same fields from an item of `GET /v1/streams/{type}/{id}/events`.
pub fn history_item_key(item: &Value) -> (i64, i64, String, String, String, String) {
    let s = |k: &str| item[k].as_str().unwrap_or_else(|| panic!("{k} in {item}")).to_owned();
    let n = |k: &str| item[k].as_i64().unwrap_or_else(|| panic!("{k} in {item}"));
    (n("position"), n("sequence"), s("event_id"), s("event_type"), s("hash"), s("prev_hash"))
}
