//! Replay from the event store while commands keep committing, a log follower keeps projecting
//! into the active schema and the API keeps answering: the switch loses and doubles nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use projection_svc::settings::ReplaySettings;
use projection_svc::{ProjectedEvent, Projector, replay, schema};
use sqlx::PgPool;
use support::{Harness, eventually, get, scenario};

/// Follows the event log from its own position (as the Kafka consumer follows its offsets) and
/// applies to whichever schema is active, until `stop`.
async fn follow(pool: PgPool, stop: Arc<AtomicBool>) -> usize {
    let mut projector = Projector::default();
    let mut after = 0;
    let mut duplicates = 0;
    loop {
        let page = event_store::read_log(&pool, after, 20).await.expect("read");
        if page.is_empty() {
            if stop.load(Ordering::SeqCst) {
                return duplicates;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let batch: Vec<ProjectedEvent> = page.iter().map(ProjectedEvent::from).collect();
        let mut tx = pool.begin().await.expect("begin");
        schema::lock_active(&mut tx).await.expect("active");
        let outcome = projector.apply_batch(&mut tx, &batch).await.expect("apply");
        tx.commit().await.expect("commit");
        assert!(outcome.gaps.is_empty(), "{:?}", outcome.gaps);
        duplicates += outcome.duplicates;
        after = batch.last().map_or(after, |e| e.position);
    }
}

#[sqlx::test(migrations = false)]
async fn a_replay_switches_under_live_traffic_and_loses_nothing(pool: PgPool) {
    let h = Harness::new(pool).await;
    scenario(&h).await;
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow(h.pool.clone(), stop.clone()));
    let reads = h.reads(5_000);
    let before = h.active().await;

    let settings = ReplaySettings { page_size: 5, drop_grace_ms: 50, progress: false };
    let pool = h.pool.clone();
    let replaying = tokio::spawn(async move { replay::replay(&pool, &settings).await });
    let mut writes = 0;
    while !replaying.is_finished() || writes < 5 {
        h.deposit("client", 100 + writes).await;
        writes += 1;
        let r = get(&h, &reads, Some("auditor"), "/v1/balances?limit=100").await;
        assert_eq!(r.status, StatusCode::OK, "the API answers during the replay: {:?}", r.body);
    }
    let report = replaying.await.expect("join").expect("replay");
    assert_eq!(report.previous, before);
    assert_ne!(report.schema, before);
    assert!(report.dropped_previous);
    assert_eq!(h.active().await, report.schema);
    let versions = schema::existing_versions(&h.pool).await.expect("schemas");
    assert_eq!(versions.len(), 1, "the old schema is gone: {versions:?}");

    // Read-your-writes across the switch: wait for the follower to reach the head.
    let head = h.head().await;
    let r = get(&h, &reads, Some("auditor"), &format!("/v1/balances?limit=100&min_position={head}")).await;
    assert_eq!(r.status, StatusCode::OK);
    stop.store(true, Ordering::SeqCst);
    follower.await.expect("follower");
    let live = h.dump().await;
    assert_eq!(live["rm_events"].len() as i64, head, "every event once");

    replay::replay(&h.pool, &ReplaySettings { page_size: 1_000, drop_grace_ms: 0, progress: false })
        .await
        .expect("second replay");
    assert_eq!(h.dump().await, live, "live projection across a switch equals a clean replay");
}

#[sqlx::test(migrations = false)]
async fn a_replay_clears_leftovers_of_an_interrupted_one(pool: PgPool) {
    let h = Harness::new(pool).await;
    scenario(&h).await;
    h.project(&mut Projector::default(), 100).await;
    let mut tx = h.pool.begin().await.expect("begin");
    schema::create_read_models(&mut tx, "rm_v5").await.expect("leftover");
    tx.commit().await.expect("commit");
    let report = replay::replay(&h.pool, &ReplaySettings { page_size: 100, drop_grace_ms: 0, progress: false })
        .await
        .expect("replay");
    assert_eq!((report.previous.as_str(), report.schema.as_str()), ("rm_v1", "rm_v2"));
    assert_eq!(schema::existing_versions(&h.pool).await.expect("schemas"), vec![2]);
    let w = eventually(Duration::from_secs(1), "watermark", || async {
        let mut conn = h.pool.acquire().await.ok()?;
        replay::schema_watermark(&mut conn, "rm_v2").await.ok()
    })
    .await;
    assert_eq!(w, h.head().await);
}
