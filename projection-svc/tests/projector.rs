//! The projector core fed from the event store (no Kafka): batches of any size give the same
//! read models as a replay, copies change nothing, a gap is reported and nothing past it is
//! applied, a cold projector refolds from `rm_events`, and the watermark is the contiguous prefix.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use projection_svc::settings::ReplaySettings;
use projection_svc::{ProjectedEvent, Projector, replay};
use serde_json::Value;
use sqlx::Row;
use support::{Harness, scenario};

fn quiet() -> ReplaySettings {
    ReplaySettings { page_size: 50, drop_grace_ms: 0, progress: false }
}

async fn rows(h: &Harness, sql: &str) -> Vec<Value> {
    let mut tx = h.pool.begin().await.expect("begin");
    projection_svc::schema::read_active(&mut tx).await.expect("active");
    let rows = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_all(&mut *tx).await.expect("rows");
    tx.commit().await.expect("commit");
    rows
}

#[sqlx::test(migrations = false)]
async fn projecting_in_small_batches_equals_a_replay_and_the_write_side_ledger(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    let ids = scenario(&h).await;
    let mut projector = Projector::default();
    let outcomes = h.project(&mut projector, 7).await;
    assert!(outcomes.iter().all(|o| o.gaps.is_empty() && o.duplicates == 0));
    let head = h.head().await;
    assert_eq!(outcomes.last().map(|o| o.watermark), Some(head));
    let live = h.dump().await;

    let report = replay::replay(&h.pool, &quiet()).await.expect("replay");
    assert_eq!((report.events, report.head), (head as u64, head));
    assert!(report.dropped_previous);
    assert_eq!(h.active().await, report.schema);
    let rebuilt = h.dump().await;
    for (table, rows) in &live {
        assert_eq!(rows, &rebuilt[table], "{table} differs between live projection and replay");
    }

    // rm_balances equals command-svc's ledger_balances (both fold the same postings).
    let ours: BTreeMap<(String, String), i64> =
        rows(&h, "SELECT jsonb_build_array(account, currency, balance) FROM rm_balances")
            .await
            .into_iter()
            // The write side keeps only the balances decisions read (available, per party; ADR
            // 0004); the read side keeps every account. Compare what both hold.
            .filter(|v| v[2] != 0 && v[0].as_str().is_some_and(|a| a.starts_with("available:")))
            .map(|v| {
                (
                    (v[0].as_str().unwrap_or("").to_owned(), v[1].as_str().unwrap_or("").to_owned()),
                    v[2].as_i64().unwrap_or(0),
                )
            })
            .collect();
    let theirs: BTreeMap<(String, String), i64> =
        sqlx::query("SELECT account, currency, balance FROM public.ledger_balances WHERE balance <> 0")
            .fetch_all(&h.pool)
            .await
            .expect("ledger")
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
    assert_eq!(ours, theirs);

    // The denormalised rows say what the domain says.
    let statuses: BTreeMap<String, String> = rows(&h, "SELECT jsonb_build_array(job_id, status) FROM rm_jobs")
        .await
        .into_iter()
        .map(|v| (v[0].as_str().unwrap_or("").to_owned(), v[1].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(statuses[&ids.settled_job], "settled");
    assert_eq!(statuses[&ids.disputed_job], "settled");
    assert_eq!(statuses[&ids.cancelled_job], "cancelled");
    assert_eq!(statuses[&ids.open_job], "running");
    assert_eq!(statuses[&ids.posted_job], "posted");
    let dispute = rows(&h, "SELECT to_jsonb(d) FROM rm_disputes d").await;
    assert_eq!(dispute.len(), 1);
    assert_eq!(dispute[0]["status"], "closed");
    assert_eq!(dispute[0]["outcome"]["kind"], "payout");
    assert_eq!(dispute[0]["appealed_by"], serde_json::json!(h.party("worker1")));
    let challenge = rows(&h, "SELECT to_jsonb(c) FROM rm_challenges c").await;
    assert_eq!(
        (challenge[0]["status"].as_str(), challenge[0]["reason"].as_str()),
        (Some("rejected"), Some("looks wrong"))
    );
    let payouts: BTreeSet<(String, String)> = rows(&h, "SELECT jsonb_build_array(payout_id, status) FROM rm_payouts")
        .await
        .into_iter()
        .map(|v| (v[0].as_str().unwrap_or("").to_owned(), v[1].as_str().unwrap_or("").to_owned()))
        .collect();
    assert!(payouts.contains(&(ids.completed_payout.clone(), "completed".to_owned())));
    assert!(payouts.contains(&(ids.failed_payout.clone(), "failed".to_owned())));
    // Re-executing workers earn no reputation in v1 (ADR 0005); the accused ones do.
    let reputation: BTreeMap<String, i64> = rows(&h, "SELECT jsonb_build_array(worker_id, score) FROM rm_reputation")
        .await
        .into_iter()
        .map(|v| (v[0].as_str().unwrap_or("").to_owned(), v[1].as_i64().unwrap_or(0)))
        .collect();
    let expected: BTreeSet<String> = ["worker1", "worker2"].iter().map(|w| h.party(w).to_string()).collect();
    assert_eq!(reputation.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(reputation.values().all(|score| *score > 0), "{reputation:?}");
    let board = rows(&h, "SELECT to_jsonb(t) FROM rm_open_tasks t ORDER BY task").await;
    assert_eq!(board.len(), 2, "the open job's two tasks: {board:?}");
    assert_eq!((board[0]["free_slots"].as_i64(), board[1]["free_slots"].as_i64()), (Some(2), Some(3)));
}

#[sqlx::test(migrations = false)]
async fn copies_delivered_again_change_nothing(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    scenario(&h).await;
    let mut projector = Projector::default();
    h.project(&mut projector, 100).await;
    let before = h.dump().await;
    let log = h.log().await;
    // The whole log again, each event twice in a row, in batches of 9, on a cold projector too.
    let doubled: Vec<ProjectedEvent> = log.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    for projector in [&mut projector, &mut Projector::default()] {
        let mut duplicates = 0;
        for chunk in doubled.chunks(9) {
            let outcome = h.apply(projector, chunk).await;
            assert_eq!((outcome.applied, outcome.gaps.len()), (0, 0));
            duplicates += outcome.duplicates;
        }
        assert_eq!(duplicates, doubled.len());
    }
    assert_eq!(h.dump().await, before);
}

#[sqlx::test(migrations = false)]
async fn a_gap_is_reported_and_nothing_past_it_is_applied_until_it_is_filled(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    let ids = scenario(&h).await;
    let log = h.log().await;
    let job_events: Vec<&ProjectedEvent> =
        log.iter().filter(|e| e.aggregate_type == "job" && e.aggregate_id == ids.settled_job).collect();
    let missing = job_events[1].clone();
    let fed: Vec<ProjectedEvent> = log.iter().filter(|e| e.position != missing.position).cloned().collect();

    let mut projector = Projector::default();
    let outcome = h.apply(&mut projector, &fed).await;
    let later = job_events.len() - 2;
    assert_eq!(outcome.gaps.len(), later, "every later event of the stream is held");
    let first = &outcome.gaps[0];
    assert_eq!((first.expected_sequence, first.sequence, first.position), (2, 3, job_events[2].position));
    assert_eq!(outcome.watermark, missing.position - 1, "the watermark stops below the hole");
    let applied: i64 = rows(
        &h,
        &format!(
            "SELECT to_jsonb(count(*)) FROM rm_events WHERE aggregate_type = 'job' AND aggregate_id = '{}'",
            ids.settled_job
        ),
    )
    .await[0]
        .as_i64()
        .unwrap_or(-1);
    assert_eq!(applied, 1, "nothing past the gap");
    let status = rows(&h, &format!("SELECT to_jsonb(status) FROM rm_jobs WHERE job_id = '{}'", ids.settled_job)).await;
    assert_eq!(status[0], "posted");

    // The missing event arrives, then the held ones are delivered again.
    let mut refill = vec![missing];
    refill.extend(job_events[2..].iter().map(|e| (*e).clone()));
    let outcome = h.apply(&mut projector, &refill).await;
    assert!(outcome.gaps.is_empty());
    assert_eq!(outcome.watermark, h.head().await);
    let healed = h.dump().await;
    replay::replay(&h.pool, &quiet()).await.expect("replay");
    assert_eq!(h.dump().await, healed, "after the gap is filled the models equal a clean replay");
}

#[sqlx::test(migrations = false)]
async fn a_cold_projector_refolds_from_the_event_history(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    scenario(&h).await;
    let log = h.log().await;
    let (first, second) = log.split_at(log.len() / 2);
    h.apply(&mut Projector::default(), first).await;
    // A new projector (a restart): its cache is empty, every touched aggregate is refolded.
    let mut cold = Projector::default();
    for chunk in second.chunks(5) {
        h.apply(&mut cold, chunk).await;
    }
    let refolded = h.dump().await;
    replay::replay(&h.pool, &quiet()).await.expect("replay");
    assert_eq!(h.dump().await, refolded);
}

#[sqlx::test(migrations = false)]
async fn the_watermark_is_the_longest_applied_prefix_of_positions(pool: sqlx::PgPool) {
    let h = Harness::new(pool).await;
    scenario(&h).await;
    let mut log = h.log().await;
    // Stream by stream (each stream in order, the global order mixed up), as Kafka partitions
    // deliver them.
    log.sort_by(|a, b| {
        (&a.aggregate_type, &a.aggregate_id, a.sequence).cmp(&(&b.aggregate_type, &b.aggregate_id, b.sequence))
    });
    let mut projector = Projector::default();
    let mut seen = BTreeSet::new();
    for chunk in log.chunks(11) {
        let outcome = h.apply(&mut projector, chunk).await;
        seen.extend(chunk.iter().map(|e| e.position));
        let expected = (1..).take_while(|p| seen.contains(p)).last().unwrap_or(0);
        assert_eq!(outcome.watermark, expected);
    }
    assert_eq!(seen.len() as i64, h.head().await);
}
