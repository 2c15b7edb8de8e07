//! Gap safety: a reader that follows `read_log(after = last position seen)` never skips an event
//! whose transaction commits late (docs/adr/0002-gap-safe-global-order.md).
//!
//! The same checker is run on a naive log with `BIGSERIAL` positions, under a fixed interleaving
//! in which a transaction that took a position first commits last: it reports the skip, which
//! shows the checker (and so the stress test) can fail.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{commit_of, event, stream, wait_for_lock_waiters};
use event_store::{StreamAppend, append_in_tx, commit, read_log};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

const WRITERS: usize = 8;
const COMMITS_PER_WRITER: usize = 125;
/// Two aggregates of 4 events each per commit: 8 writers x 125 commits x 8 = 8000 events.
const EVENTS_PER_STREAM: usize = 4;
const AGGREGATES_PER_WRITER: usize = 4;
const TOTAL_EVENTS: usize = WRITERS * COMMITS_PER_WRITER * 2 * EVENTS_PER_STREAM;
/// Upper bound of the random pause between taking positions and committing.
const COMMIT_DELAY_MAX_MICROS: u64 = 2_000;
const READ_BATCH_SIZE: i64 = 500;
const STRESS_DEADLINE: Duration = Duration::from_secs(120);

/// One event as a follower saw it.
#[derive(Debug, Clone)]
struct Seen {
    position: i64,
    aggregate: String,
    sequence: i64,
    event_id: Uuid,
}

/// What a follower must have seen: every written event exactly once, positions 1, 2, 3, ...
/// without a gap, and each aggregate's sequences 1, 2, 3, ... in order.
fn check_followed_log(seen: &[Seen], written: &HashSet<Uuid>) -> Result<(), String> {
    let mut ids = HashSet::with_capacity(seen.len());
    let mut last_sequence: HashMap<&str, i64> = HashMap::new();
    for (expected_position, event) in (1_i64..).zip(seen) {
        if event.position != expected_position {
            return Err(format!(
                "expected position {expected_position}, saw {}: skipped {} event(s)",
                event.position,
                event.position - expected_position
            ));
        }
        if !ids.insert(event.event_id) {
            return Err(format!("event {} seen twice", event.event_id));
        }
        let last = last_sequence.entry(&event.aggregate).or_insert(0);
        if event.sequence != *last + 1 {
            return Err(format!("{} sequence {} after {}", event.aggregate, event.sequence, last));
        }
        *last = event.sequence;
    }
    if let Some(missing) = written.iter().find(|id| !ids.contains(id)) {
        return Err(format!("saw {} of {} events; never saw {missing}", ids.len(), written.len()));
    }
    if ids.len() != written.len() {
        return Err(format!("saw {} events, {} written", ids.len(), written.len()));
    }
    Ok(())
}

/// One writer: 125 commits, each appending 4 events to two of its own aggregates, pausing a
/// random 0-2 ms after taking positions and before committing. Returns the ids it wrote.
async fn writer(pool: PgPool, writer: usize) -> HashSet<Uuid> {
    let mut rng = StdRng::seed_from_u64(u64::try_from(writer).unwrap_or(0));
    let mut sequences = [0_i64; AGGREGATES_PER_WRITER];
    let mut written = HashSet::new();
    for c in 0..COMMITS_PER_WRITER {
        let targets = [c % AGGREGATES_PER_WRITER, (c + 1) % AGGREGATES_PER_WRITER];
        let streams: Vec<StreamAppend> = targets
            .iter()
            .map(|&a| StreamAppend {
                aggregate_type: "job".to_owned(),
                aggregate_id: format!("w{writer}-a{a}"),
                expected_sequence: sequences[a],
                expected_last_hash: None,
                events: (0..EVENTS_PER_STREAM)
                    .map(|i| event("Noted", json!({"writer": writer, "commit": c, "i": i})))
                    .collect(),
            })
            .collect();
        written.extend(streams.iter().flat_map(|s| s.events.iter().map(|e| e.event_id)));

        let mut tx = pool.begin().await.expect("begin");
        append_in_tx(&mut tx, commit_of(streams)).await.expect("append");
        let delay = Duration::from_micros(rng.random_range(0..=COMMIT_DELAY_MAX_MICROS));
        tokio::time::sleep(delay).await;
        tx.commit().await.expect("commit");

        for a in targets {
            sequences[a] += i64::try_from(EVENTS_PER_STREAM).unwrap_or(0);
        }
    }
    written
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_follower_sees_every_event_once_in_order_while_8_writers_commit_late(
    pool_opts: PgPoolOptions,
    connect_opts: PgConnectOptions,
) {
    let connections = u32::try_from(WRITERS + 2).unwrap_or(10);
    let pool = pool_opts.max_connections(connections).connect_with(connect_opts).await.expect("pool");
    let started = Instant::now();
    let writers_done = Arc::new(AtomicBool::new(false));

    let follower = tokio::spawn({
        let pool = pool.clone();
        let writers_done = Arc::clone(&writers_done);
        async move {
            let mut seen: Vec<Seen> = Vec::with_capacity(TOTAL_EVENTS);
            let mut last_position = 0;
            let mut polls = 0_u64;
            loop {
                // Read the flag before the log: once it is set, this read sees every commit.
                let done = writers_done.load(Ordering::Acquire);
                let batch = read_log(&pool, last_position, READ_BATCH_SIZE).await.expect("read log");
                polls += 1;
                if let Some(last) = batch.last() {
                    last_position = last.position;
                }
                let caught_up = batch.is_empty();
                seen.extend(batch.into_iter().map(|e| Seen {
                    position: e.position,
                    aggregate: e.aggregate_id,
                    sequence: e.sequence,
                    event_id: e.event_id,
                }));
                if caught_up && done {
                    return (seen, polls);
                }
                assert!(started.elapsed() < STRESS_DEADLINE, "follower still reading");
                if caught_up {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });

    let writers: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(writer(pool.clone(), w))).collect();
    let mut written = HashSet::with_capacity(TOTAL_EVENTS);
    for w in writers {
        written.extend(w.await.expect("writer"));
    }
    let write_time = started.elapsed();
    writers_done.store(true, Ordering::Release);
    let (seen, polls) = follower.await.expect("follower");

    eprintln!(
        "{TOTAL_EVENTS} events in {} commits by {WRITERS} writers: {write_time:?}; \
         follower polled {polls} times",
        WRITERS * COMMITS_PER_WRITER
    );
    check_followed_log(&seen, &written).expect("the follower saw the whole log in order");
    assert_eq!(written.len(), TOTAL_EVENTS);
    assert_eq!(seen.last().map(|e| e.position), i64::try_from(TOTAL_EVENTS).ok());
    let report = event_store::verify_all(&pool).await.expect("verify");
    assert!(report.is_intact(), "{report:?}");
}

/// Fixed interleaving: A takes positions first and commits last. With the head row, B cannot
/// even take a position until A commits, so a follower cannot get ahead of A.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_late_commit_is_not_skipped_by_a_follower(pool: PgPool) {
    let mut a = pool.begin().await.expect("begin a");
    let a_ids = append_in_tx(&mut a, commit_of(vec![stream("a", 0, 1)])).await.expect("append a");
    let b = tokio::spawn({
        let pool = pool.clone();
        async move { commit(&pool, commit_of(vec![stream("b", 0, 1)])).await }
    });
    wait_for_lock_waiters(&pool, 1).await;

    let mut seen = Vec::new();
    let mut last_position = 0;
    follow(&pool, &mut seen, &mut last_position).await; // A and B both in flight: nothing
    assert!(seen.is_empty(), "{seen:?}");
    a.commit().await.expect("commit a");
    let b_ids = b.await.expect("join b").expect("commit b");
    follow(&pool, &mut seen, &mut last_position).await;

    let written: HashSet<Uuid> = a_ids.events.iter().chain(&b_ids.events).map(|e| e.event_id).collect();
    check_followed_log(&seen, &written).expect("nothing skipped");
}

async fn follow(pool: &PgPool, seen: &mut Vec<Seen>, last_position: &mut i64) {
    for e in read_log(pool, *last_position, READ_BATCH_SIZE).await.expect("read") {
        *last_position = e.position;
        seen.push(Seen { position: e.position, aggregate: e.aggregate_id, sequence: e.sequence, event_id: e.event_id });
    }
}

/// The same interleaving on a naive log whose positions come from `BIGSERIAL`: A takes position
/// 1, B takes 2 and commits, the follower reads 2 and moves past 1, then A commits, too late.
#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_bigserial_log_skips_a_late_commit_and_the_checker_says_so(pool: PgPool) {
    sqlx::query(
        "CREATE TABLE naive_log (position BIGSERIAL PRIMARY KEY, aggregate TEXT NOT NULL,
                                 event_id UUID NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("create naive_log");
    let insert = "INSERT INTO naive_log (aggregate, event_id) VALUES ($1, $2)";
    let (a_id, b_id) = (Uuid::new_v4(), Uuid::new_v4());

    let mut a = pool.begin().await.expect("begin a");
    sqlx::query(insert).bind("a").bind(a_id).execute(&mut *a).await.expect("insert a");
    let mut b = pool.begin().await.expect("begin b");
    sqlx::query(insert).bind("b").bind(b_id).execute(&mut *b).await.expect("insert b");
    b.commit().await.expect("commit b");

    let mut seen = Vec::new();
    let mut last_position = 0;
    follow_naive(&pool, &mut seen, &mut last_position).await;
    a.commit().await.expect("commit a");
    follow_naive(&pool, &mut seen, &mut last_position).await;

    let written = HashSet::from([a_id, b_id]);
    let verdict = check_followed_log(&seen, &written);
    assert_eq!(verdict, Err("expected position 1, saw 2: skipped 1 event(s)".to_owned()));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM naive_log").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 2, "A is in the table, the follower just never saw it");
}

async fn follow_naive(pool: &PgPool, seen: &mut Vec<Seen>, last_position: &mut i64) {
    let rows: Vec<(i64, String, Uuid)> =
        sqlx::query_as("SELECT position, aggregate, event_id FROM naive_log WHERE position > $1 ORDER BY position")
            .bind(*last_position)
            .fetch_all(pool)
            .await
            .expect("read naive_log");
    for (position, aggregate, event_id) in rows {
        *last_position = position;
        seen.push(Seen { position, aggregate, sequence: 1, event_id });
    }
}
