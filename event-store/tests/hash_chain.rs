//! The hash chain: an untouched store verifies; changing, re-hashing or deleting a stored event
//! is reported at the right aggregate, sequence and position; the byte layout is frozen.

mod common;

use common::{commit_of, stream};
use event_store::hash::{HashInput, event_hash};
use event_store::{Break, EventRef, ZERO_HASH, commit, load_stream, verify_aggregate, verify_all};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// j1 gets sequences 1-3 at positions 1, 2, 4; j2 sequence 1 at position 3 and 2 at position 5.
async fn three_commits(pool: &PgPool) {
    commit(pool, commit_of(vec![stream("j1", 0, 2), stream("j2", 0, 1)])).await.expect("commit 1");
    commit(pool, commit_of(vec![stream("j1", 2, 1)])).await.expect("commit 2");
    commit(pool, commit_of(vec![stream("j2", 1, 1)])).await.expect("commit 3");
}

fn at(aggregate_id: &str, sequence: i64, position: i64) -> EventRef {
    EventRef { aggregate_type: "job".to_owned(), aggregate_id: aggregate_id.to_owned(), sequence, position }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_untouched_store_verifies(pool: PgPool) {
    three_commits(&pool).await;

    let all = verify_all(&pool).await.expect("verify");
    assert!(all.is_intact(), "{all:?}");
    assert_eq!((all.events_checked, all.aggregates_checked, all.head_position), (5, 2, 5));

    let j1 = verify_aggregate(&pool, "job", "j1").await.expect("verify j1");
    assert!(j1.is_intact(), "{j1:?}");
    assert_eq!((j1.events_checked, j1.aggregates_checked), (3, 1));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn an_empty_store_verifies(pool: PgPool) {
    let report = verify_all(&pool).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 0);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn changing_one_stored_payload_is_detected(pool: PgPool) {
    three_commits(&pool).await;

    sqlx::query(
        "UPDATE events SET payload = '{\"n\": 1000000}'
         WHERE aggregate_id = 'j1' AND sequence = 2",
    )
    .execute(&pool)
    .await
    .expect("tamper");

    let expected_at = at("j1", 2, 2);
    let j1 = verify_aggregate(&pool, "job", "j1").await.expect("verify j1");
    assert!(matches!(&j1.first_break, Some(Break::HashMismatch { at, .. }) if *at == expected_at), "{j1:?}");
    assert_eq!(j1.events_checked, 1);
    let all = verify_all(&pool).await.expect("verify all");
    assert!(matches!(&all.first_break, Some(Break::HashMismatch { at, .. }) if *at == expected_at), "{all:?}");
    // The other aggregate is untouched.
    assert!(verify_aggregate(&pool, "job", "j2").await.expect("verify j2").is_intact());
}

/// Someone who can write the table and knows the layout re-hashes the row they changed: the next
/// event's link to it breaks.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn re_hashing_a_changed_event_breaks_the_next_link(pool: PgPool) {
    three_commits(&pool).await;
    let events = load_stream(&pool, "job", "j1", 0).await.expect("load");
    let target = &events[1];
    let forged_payload = json!({"n": 1_000_000});
    let metadata = serde_json::to_value(&target.metadata).expect("metadata");
    let forged_hash = event_hash(&HashInput {
        aggregate_type: &target.aggregate_type,
        aggregate_id: &target.aggregate_id,
        sequence: target.sequence,
        event_id: target.event_id,
        event_type: &target.event_type,
        event_version: target.event_version,
        recorded_at_unix_micros: target.recorded_at_unix_micros,
        payload: &forged_payload,
        metadata: &metadata,
        prev_hash: &target.prev_hash,
    });
    sqlx::query("UPDATE events SET payload = $1, hash = $2 WHERE position = $3")
        .bind(&forged_payload)
        .bind(&forged_hash[..])
        .bind(target.position)
        .execute(&pool)
        .await
        .expect("forge");

    let all = verify_all(&pool).await.expect("verify");
    assert_eq!(all.first_break, Some(Break::BrokenLink { at: at("j1", 3, 4) }));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn deleting_an_event_is_detected(pool: PgPool) {
    three_commits(&pool).await;

    sqlx::query("DELETE FROM outbox WHERE position = 3").execute(&pool).await.expect("delete outbox row");
    sqlx::query("DELETE FROM events WHERE position = 3").execute(&pool).await.expect("delete event");

    let all = verify_all(&pool).await.expect("verify all");
    assert_eq!(all.first_break, Some(Break::PositionGap { expected: 3, at: Some(at("j1", 3, 4)) }));
    let j2 = verify_aggregate(&pool, "job", "j2").await.expect("verify j2");
    assert_eq!(j2.first_break, Some(Break::SequenceGap { at: at("j2", 2, 5), expected: 1 }));
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn deleting_the_last_event_is_detected(pool: PgPool) {
    three_commits(&pool).await;

    sqlx::query("DELETE FROM outbox WHERE position = 5").execute(&pool).await.expect("outbox");
    sqlx::query("DELETE FROM events WHERE position = 5").execute(&pool).await.expect("event");

    let all = verify_all(&pool).await.expect("verify all");
    assert_eq!(all.first_break, Some(Break::PositionGap { expected: 5, at: None }));
}

/// The documented layout, recomputed independently (Python's hashlib, struct and
/// `json.dumps(v, sort_keys=True, separators=(',', ':'), ensure_ascii=False)`). If this fails,
/// the layout changed: every stored hash and every auditor's tool breaks with it.
#[test]
fn the_hash_layout_is_frozen() {
    let payload = json!({
        "note": "café \"x\"\n",
        "amount": {"minor_units": 12500, "currency": "EUR"},
        "tags": ["b", "a"],
    });
    let metadata = json!({
        "actor": "user:alice",
        "command_id": "00000000-0000-4000-8000-000000000001",
        "correlation_id": "00000000-0000-4000-8000-000000000002",
        "causation_id": "00000000-0000-4000-8000-000000000003",
    });
    let prev_hash: [u8; 32] = std::array::from_fn(|i| u8::try_from(i + 1).unwrap_or(0));
    let input = HashInput {
        aggregate_type: "escrow",
        aggregate_id: "job-42",
        sequence: 2,
        event_id: Uuid::parse_str("6f1c2b1e-3d4a-4b5c-8d9e-0a1b2c3d4e5f").expect("uuid"),
        event_type: "EscrowHeld",
        event_version: 1,
        recorded_at_unix_micros: 1_764_151_234_567_891,
        payload: &payload,
        metadata: &metadata,
        prev_hash: &prev_hash,
    };

    assert_eq!(event_store::hash::canonical_bytes(&input).len(), 420);
    assert_eq!(hex::encode(event_hash(&input)), "6a3967bbacc2eeb995a31c295e52da2e857d1e0ee8334aa663ac72af291044aa");
    assert_ne!(event_hash(&input), ZERO_HASH);
}
