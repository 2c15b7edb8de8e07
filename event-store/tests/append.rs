//! Appending and reading back: round trip, optimistic concurrency, atomic multi-aggregate
//! commits, idempotency records and the outbox, against a fresh database per test.

mod common;

use common::{Counts, RECORDED_AT_UNIX_MICROS, commit_of, counts, event, stream, wait_for_lock_waiters};
use event_store::hash::canonical_json;
use event_store::{
    AppendError, IdempotencyRecord, ZERO_HASH, append_in_tx, commit, head_position, load_stream, lookup_idempotency,
    mark_published, read_log, read_unpublished,
};
use serde_json::json;
use sqlx::PgPool;

fn idempotency(key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: "POST /jobs".to_owned(),
        key: key.to_owned(),
        request_hash: vec![7; 32],
        response_status: 201,
        response_body: br#"{"id":"j1"}"#.to_vec(),
    }
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn appended_events_load_back_with_every_column(pool: PgPool) {
    let mut c = commit_of(vec![stream("j1", 0, 2)]);
    c.streams[0].events[1] = event("Priced", json!({"amount": {"minor_units": 12500, "currency": "EUR"}}));
    let metadata = c.metadata.clone();
    let written = c.streams[0].events.clone();

    let committed = commit(&pool, c).await.expect("commit");

    assert_eq!(committed.last_position, 2);
    let loaded = load_stream(&pool, "job", "j1", 0).await.expect("load");
    assert_eq!(loaded, committed.events);
    for (i, (stored, new)) in loaded.iter().zip(&written).enumerate() {
        let i = i64::try_from(i).expect("small");
        assert_eq!(stored.position, i + 1);
        assert_eq!(stored.sequence, i + 1);
        assert_eq!((stored.aggregate_type.as_str(), stored.aggregate_id.as_str()), ("job", "j1"));
        assert_eq!(stored.event_id, new.event_id);
        assert_eq!(stored.event_type, new.event_type);
        assert_eq!(stored.event_version, new.event_version);
        assert_eq!(stored.payload, new.payload);
        assert_eq!(stored.metadata, metadata);
        assert_eq!(stored.recorded_at_unix_micros, RECORDED_AT_UNIX_MICROS);
    }
    assert_eq!(loaded[0].prev_hash, ZERO_HASH);
    assert_eq!(loaded[1].prev_hash, loaded[0].hash);

    assert_eq!(load_stream(&pool, "job", "j1", 1).await.expect("load"), loaded[1..]);
    assert_eq!(read_log(&pool, 0, 10).await.expect("read"), loaded);
    assert_eq!(read_log(&pool, 1, 10).await.expect("read"), loaded[1..]);
    assert_eq!(head_position(&pool).await.expect("head"), 2);

    // The next commit continues the chain.
    let mut next = commit_of(vec![stream("j1", 2, 1)]);
    next.streams[0].expected_last_hash = Some(loaded[1].hash);
    let next = commit(&pool, next).await.expect("second commit");
    assert_eq!((next.events[0].sequence, next.events[0].position), (3, 3));
    assert_eq!(next.events[0].prev_hash, loaded[1].hash);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_outbox_holds_every_event_until_it_is_marked_published(pool: PgPool) {
    commit(&pool, commit_of(vec![stream("j1", 0, 2), stream("j2", 0, 1)])).await.expect("commit");

    let unpublished = read_unpublished(&pool, 10).await.expect("outbox");
    let positions: Vec<i64> = unpublished.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3]);
    assert_eq!(unpublished[2].aggregate_id, "j2");
    assert_eq!(read_unpublished(&pool, 2).await.expect("outbox").len(), 2);

    assert_eq!(mark_published(&pool, &[1, 3]).await.expect("mark"), 2);
    assert_eq!(mark_published(&pool, &[1]).await.expect("mark again"), 0);
    let left: Vec<i64> = read_unpublished(&pool, 10).await.expect("outbox").iter().map(|e| e.position).collect();
    assert_eq!(left, [2]);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn of_two_commits_expecting_the_same_sequence_exactly_one_wins(pool: PgPool) {
    commit(&pool, commit_of(vec![stream("j1", 0, 1)])).await.expect("seed");
    let before = counts(&pool).await;

    let mut second = commit_of(vec![stream("j1", 1, 3)]);
    second.idempotency = Some(idempotency("k2"));
    let (a, b) = tokio::join!(commit(&pool, commit_of(vec![stream("j1", 1, 3)])), commit(&pool, second),);

    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) => (won, lost),
        (Err(lost), Ok(won)) => (won, lost),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert!(
        matches!(&lost, AppendError::Conflict { aggregate_id, expected: 1, .. } if aggregate_id == "j1"),
        "{lost:?}"
    );
    let after = counts(&pool).await;
    assert_eq!(after.events, before.events + 3);
    assert_eq!(after.outbox, before.outbox + 3);
    assert_eq!(after.head, won.last_position);
    let sequences: Vec<i64> =
        load_stream(&pool, "job", "j1", 0).await.expect("load").iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
}

/// The race the unique key exists for: both writers read sequence 0, one takes the head first,
/// the other waits for it and must fail on `events_aggregate_sequence_key`, writing nothing
/// (not its events, outbox rows or idempotency record).
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_writer_that_waited_for_the_head_gets_a_conflict_and_writes_nothing(pool: PgPool) {
    let mut first = pool.begin().await.expect("begin");
    append_in_tx(&mut first, commit_of(vec![stream("j1", 0, 2)])).await.expect("first append");

    let mut second = commit_of(vec![stream("j2", 0, 1), stream("j1", 0, 1)]);
    second.idempotency = Some(idempotency("k2"));
    let racing = tokio::spawn({
        let pool = pool.clone();
        async move { commit(&pool, second).await }
    });
    wait_for_lock_waiters(&pool, 1).await;
    first.commit().await.expect("commit first");

    let lost = racing.await.expect("join");
    assert!(
        matches!(&lost, Err(AppendError::Conflict { aggregate_id, expected: 0, .. }) if aggregate_id == "j1"),
        "{lost:?}"
    );
    assert_eq!(counts(&pool).await, Counts { events: 2, outbox: 2, idempotency: 0, head: 2 });
    assert!(load_stream(&pool, "job", "j2", 0).await.expect("load").is_empty());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_conflict_on_the_second_aggregate_writes_nothing_for_the_first(pool: PgPool) {
    commit(&pool, commit_of(vec![stream("j2", 0, 1)])).await.expect("seed");

    let mut c = commit_of(vec![stream("j1", 0, 2), stream("j2", 0, 1)]);
    c.idempotency = Some(idempotency("k1"));
    let result = commit(&pool, c).await;

    assert!(
        matches!(&result, Err(AppendError::Conflict { aggregate_id, expected: 0, .. }) if aggregate_id == "j2"),
        "{result:?}"
    );
    assert_eq!(counts(&pool).await, Counts { events: 1, outbox: 1, idempotency: 0, head: 1 });
    assert!(load_stream(&pool, "job", "j1", 0).await.expect("load").is_empty());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_stale_cached_hash_is_a_conflict(pool: PgPool) {
    commit(&pool, commit_of(vec![stream("j1", 0, 1)])).await.expect("seed");

    let mut c = commit_of(vec![stream("j1", 1, 1)]);
    c.streams[0].expected_last_hash = Some([9; 32]);
    let result = commit(&pool, c).await;

    assert!(matches!(result, Err(AppendError::Conflict { expected: 1, .. })), "{result:?}");
    assert_eq!(counts(&pool).await.events, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn expecting_a_sequence_beyond_the_last_is_a_conflict_not_a_gap(pool: PgPool) {
    commit(&pool, commit_of(vec![stream("j1", 0, 1)])).await.expect("seed");

    let result = commit(&pool, commit_of(vec![stream("j1", 5, 1)])).await;

    assert!(matches!(result, Err(AppendError::Conflict { expected: 5, .. })), "{result:?}");
    assert_eq!(counts(&pool).await.events, 1);
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_reused_idempotency_key_is_refused_and_the_stored_answer_kept(pool: PgPool) {
    let mut c = commit_of(vec![stream("j1", 0, 1)]);
    c.idempotency = Some(idempotency("k1"));
    commit(&pool, c).await.expect("first");
    let before = counts(&pool).await;

    let mut again = commit_of(vec![stream("j2", 0, 1)]);
    again.idempotency = Some(IdempotencyRecord { response_status: 500, ..idempotency("k1") });
    let result = commit(&pool, again).await;

    assert!(matches!(&result, Err(AppendError::DuplicateIdempotencyKey { key, .. }) if key == "k1"), "{result:?}");
    assert_eq!(counts(&pool).await, before);
    let stored = lookup_idempotency(&pool, "POST /jobs", "k1").await.expect("lookup").expect("stored");
    assert_eq!(stored.record, idempotency("k1"));
    assert_eq!(stored.created_at_unix_micros, RECORDED_AT_UNIX_MICROS);
    assert!(lookup_idempotency(&pool, "POST /jobs", "other").await.expect("lookup").is_none());
    assert!(lookup_idempotency(&pool, "other scope", "k1").await.expect("lookup").is_none());
}

/// Two requests with the same key in flight at once: the second waits on the key, then fails.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_duplicate_key_in_flight_waits_then_fails_and_writes_nothing(pool: PgPool) {
    let mut first = pool.begin().await.expect("begin");
    let mut c = commit_of(vec![stream("j1", 0, 1)]);
    c.idempotency = Some(idempotency("k1"));
    append_in_tx(&mut first, c).await.expect("first append");

    let mut duplicate = commit_of(vec![stream("j2", 0, 1)]);
    duplicate.idempotency = Some(idempotency("k1"));
    let racing = tokio::spawn({
        let pool = pool.clone();
        async move { commit(&pool, duplicate).await }
    });
    wait_for_lock_waiters(&pool, 1).await;
    first.commit().await.expect("commit first");

    let result = racing.await.expect("join");
    assert!(matches!(result, Err(AppendError::DuplicateIdempotencyKey { .. })), "{result:?}");
    assert_eq!(counts(&pool).await, Counts { events: 1, outbox: 1, idempotency: 1, head: 1 });
    assert!(load_stream(&pool, "job", "j2", 0).await.expect("load").is_empty());
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_duplicate_key_in_flight_succeeds_if_the_first_rolls_back(pool: PgPool) {
    let mut first = pool.begin().await.expect("begin");
    let mut c = commit_of(vec![stream("j1", 0, 1)]);
    c.idempotency = Some(idempotency("k1"));
    append_in_tx(&mut first, c).await.expect("first append");

    let mut retry = commit_of(vec![stream("j2", 0, 1)]);
    retry.idempotency = Some(idempotency("k1"));
    let racing = tokio::spawn({
        let pool = pool.clone();
        async move { commit(&pool, retry).await }
    });
    wait_for_lock_waiters(&pool, 1).await;
    first.rollback().await.expect("roll back first");

    let committed = racing.await.expect("join").expect("retry commits");
    // The rolled-back transaction gave its position back: no gap.
    assert_eq!(committed.last_position, 1);
    assert_eq!(counts(&pool).await, Counts { events: 1, outbox: 1, idempotency: 1, head: 1 });
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn malformed_commits_are_refused_before_touching_the_database(pool: PgPool) {
    let empty_stream = {
        let mut s = stream("j1", 0, 1);
        s.events.clear();
        s
    };
    let cases = [
        ("no streams", commit_of(vec![])),
        ("no events", commit_of(vec![empty_stream])),
        ("same aggregate twice", commit_of(vec![stream("j1", 0, 1), stream("j1", 1, 1)])),
        ("negative sequence", commit_of(vec![stream("j1", -1, 1)])),
        ("recorded_at beyond 2^53 microseconds", {
            let mut c = commit_of(vec![stream("j1", 0, 1)]);
            c.recorded_at_unix_micros = (1 << 53) + 1;
            c
        }),
        ("version 0", {
            let mut c = commit_of(vec![stream("j1", 0, 1)]);
            c.streams[0].events[0].event_version = 0;
            c
        }),
    ];
    for (name, c) in cases {
        let result = commit(&pool, c).await;
        assert!(matches!(result, Err(AppendError::InvalidCommit(_))), "{name}: {result:?}");
    }
    assert_eq!(counts(&pool).await.events, 0);
}

/// `jsonb` stores numbers as `numeric`: `-0.0` comes back as `0.0`, the float `1e19` as an
/// integer. The hash must cover what comes back, or verification would fail on such events.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn payloads_with_floats_are_hashed_as_stored(pool: PgPool) {
    let payload = json!({
        "neg_zero": -0.0, "big_float": 1e19, "tenth": 0.1, "max": u64::MAX, "min": i64::MIN,
        "tiny": 5e-324, "nested": [1.5, {"z": 1, "a": 2.0}], "text": "a\u{1}b\"é",
    });
    let mut c = commit_of(vec![stream("j1", 0, 1)]);
    c.streams[0].events[0].payload = payload;

    let committed = commit(&pool, c).await.expect("commit");

    let loaded = load_stream(&pool, "job", "j1", 0).await.expect("load");
    assert_eq!(canonical_json(&loaded[0].payload), canonical_json(&committed.events[0].payload));
    let report = event_store::verify_all(&pool).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
}
