//! The Kafka consumer against the real tansu broker and PostgreSQL, fed by the real outbox relay
//! (or by a bare producer for copies and holes): the live projection equals a replay row for row;
//! copies change nothing; a gap is held and reported, nothing past it applied, and it heals; a
//! consumer killed mid-stream resumes from PostgreSQL's offsets and ends equal to a clean replay.
//! Each test has its own database, topic prefix and consumer group.

mod support;

use std::time::Duration;

use projection_svc::settings::{KafkaSettings, ReplaySettings};
use projection_svc::{replay, schema};
use sqlx::PgPool;
use support::kafka::{self, spawn_consumer, spawn_relay};
use support::{Harness, eventually, scenario};

const DEADLINE: Duration = Duration::from_secs(90);

async fn watermark(h: &Harness) -> i64 {
    let mut conn = h.pool.acquire().await.expect("conn");
    replay::schema_watermark(&mut conn, &h.active().await).await.expect("watermark")
}

async fn caught_up(h: &Harness, what: &str) {
    let head = h.head().await;
    eventually(DEADLINE, what, || async { (watermark(h).await >= head).then_some(()) }).await;
}

/// The dump of a clean replay of the whole store (it becomes the active schema).
async fn replayed(h: &Harness) -> std::collections::BTreeMap<&'static str, Vec<String>> {
    replay::replay(&h.pool, &ReplaySettings { page_size: 500, drop_grace_ms: 0, progress: false })
        .await
        .expect("replay");
    h.dump().await
}

async fn stored_offsets(pool: &PgPool, settings: &KafkaSettings) -> Vec<(String, i32, i64)> {
    sqlx::query_as("SELECT topic, partition, next_offset FROM rm_offsets WHERE group_id = $1 ORDER BY 1, 2")
        .bind(&settings.group_id)
        .fetch_all(pool)
        .await
        .expect("offsets")
}

#[sqlx::test(migrations = false)]
async fn the_live_projection_from_kafka_equals_a_replay(pool: PgPool) {
    let h = Harness::new(pool).await;
    let settings = kafka::settings();
    let relay = spawn_relay(&h.pool, &settings);
    scenario(&h).await;
    let consumer = spawn_consumer(&h.pool, &settings);
    caught_up(&h, "the consumer to project the scenario").await;
    // More traffic while it runs.
    for n in 0..10 {
        h.deposit("client2", 1_000 + n).await;
    }
    h.post_job("client2", 100, 2, 2, 0).await;
    caught_up(&h, "the consumer to project the later commands").await;
    consumer.stop().await;
    relay.stop().await;

    let live = h.dump().await;
    assert_eq!(live["rm_events"].len() as i64, h.head().await);
    assert!(!stored_offsets(&h.pool, &settings).await.is_empty(), "offsets stored with the read models");
    assert_eq!(replayed(&h).await, live, "live projection from Kafka == replay from the store");
}

#[sqlx::test(migrations = false)]
async fn copies_delivered_twice_change_nothing(pool: PgPool) {
    let h = Harness::new(pool).await;
    let settings = kafka::settings();
    scenario(&h).await;
    kafka::create_topics(&settings).await;
    let log = event_store::read_log(&h.pool, 0, 100_000).await.expect("log");
    kafka::publish(&settings, &log).await;
    let consumer = spawn_consumer(&h.pool, &settings);
    caught_up(&h, "the first copy").await;
    let once = h.dump().await;
    // The relay's crash-between-ack-and-commit case: the whole log published again.
    kafka::publish(&settings, &log).await;
    let total = log.len() as u64;
    eventually(DEADLINE, "every copy to be seen", || async { (consumer.metrics.duplicates() >= total).then_some(()) })
        .await;
    assert_eq!(consumer.metrics.applied(), total);
    consumer.stop().await;
    assert_eq!(h.dump().await, once);
}

#[sqlx::test(migrations = false)]
async fn a_gap_is_held_and_reported_then_heals(pool: PgPool) {
    let h = Harness::new(pool).await;
    let settings = kafka::settings();
    let ids = scenario(&h).await;
    kafka::create_topics(&settings).await;
    let log = event_store::read_log(&h.pool, 0, 100_000).await.expect("log");
    let stream: Vec<&event_store::StoredEvent> =
        log.iter().filter(|e| e.aggregate_type == "job" && e.aggregate_id == ids.settled_job).collect();
    let missing = stream[1].clone();
    let held: Vec<event_store::StoredEvent> = stream[2..].iter().map(|e| (*e).clone()).collect();
    let without: Vec<event_store::StoredEvent> =
        log.iter().filter(|e| e.position != missing.position).cloned().collect();
    let delivered = kafka::publish(&settings, &without).await;
    let first_held_offset = without
        .iter()
        .zip(&delivered)
        .find(|(e, _)| e.position == held[0].position)
        .map(|(_, (partition, offset))| (*partition, *offset))
        .expect("held event delivered");

    let consumer = spawn_consumer(&h.pool, &settings);
    let later = held.len() as u64;
    eventually(DEADLINE, "every other event to be applied", || async {
        (consumer.metrics.applied() == log.len() as u64 - 1 - later).then_some(())
    })
    .await;
    eventually(DEADLINE, "the gap to be held", || async {
        (consumer.metrics.unresolved_gaps() == later).then_some(())
    })
    .await;
    assert!(consumer.metrics.gaps() >= later);
    assert_eq!(watermark(&h).await, missing.position - 1, "the watermark stops below the hole");
    let job_topic = settings.topic("job");
    let offsets = stored_offsets(&h.pool, &settings).await;
    let stored = offsets
        .iter()
        .find(|(t, p, _)| *t == job_topic && *p == first_held_offset.0)
        .map(|(_, _, o)| *o)
        .expect("the partition's offset is stored");
    assert!(stored <= first_held_offset.1, "offset {stored} stored past the gap at {}", first_held_offset.1);

    // The missing event arrives late, then the relay's retry publishes the held ones again.
    let mut late = vec![missing];
    late.extend(held);
    kafka::publish(&settings, &late).await;
    caught_up(&h, "the gap to heal").await;
    eventually(DEADLINE, "no gap held", || async { (consumer.metrics.unresolved_gaps() == 0).then_some(()) }).await;
    consumer.stop().await;
    let healed = h.dump().await;
    assert!(
        stored_offsets(&h.pool, &settings)
            .await
            .iter()
            .any(|(t, p, o)| *t == job_topic && *p == first_held_offset.0 && *o > first_held_offset.1),
        "the offset moves past the healed gap"
    );
    assert_eq!(replayed(&h).await, healed);
}

#[sqlx::test(migrations = false)]
async fn a_consumer_killed_mid_stream_resumes_from_postgres_and_doubles_nothing(pool: PgPool) {
    let h = Harness::new(pool).await;
    let settings = KafkaSettings { batch_size_max: 3, batch_wait_ms: 5, ..kafka::settings() };
    let relay = spawn_relay(&h.pool, &settings);
    scenario(&h).await;
    let first = spawn_consumer(&h.pool, &settings);
    caught_up(&h, "the first consumer").await;
    // Commands keep coming; the consumer is killed among them (mid-batch, possibly).
    let mut first = Some(first);
    for n in 0..20 {
        h.deposit("client2", 2_000 + n).await;
        if n == 10
            && let Some(consumer) = first.take()
        {
            consumer.kill().await;
        }
    }
    let at_kill = watermark(&h).await;
    assert!(at_kill > 0 && at_kill < h.head().await, "killed mid-stream ({at_kill} of {})", h.head().await);
    // Kafka may hold committed offsets; PostgreSQL's are the truth: make them older than
    // Kafka's, so a consumer that trusted Kafka would skip events.
    sqlx::query("UPDATE rm_offsets SET next_offset = 0 WHERE group_id = $1")
        .bind(&settings.group_id)
        .execute(&h.pool)
        .await
        .expect("rewind");

    let second = spawn_consumer(&h.pool, &settings);
    caught_up(&h, "the restarted consumer").await;
    assert!(second.metrics.duplicates() > 0, "it started from PostgreSQL's (rewound) offsets, not Kafka's");
    second.stop().await;
    relay.stop().await;
    let resumed = h.dump().await;
    assert_eq!(resumed["rm_events"].len() as i64, h.head().await, "nothing doubled, nothing lost");
    assert_eq!(replayed(&h).await, resumed);
    assert_eq!(schema::existing_versions(&h.pool).await.expect("schemas").len(), 1);
}
