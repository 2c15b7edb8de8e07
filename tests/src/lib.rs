//! The end-to-end harness: DSCM's real services, in process, on real TCP ports, against a real
//! PostgreSQL and a real Kafka-protocol broker (tansu), driven through their HTTP APIs only.
//!
//! - [`db`]: a fresh database per test, created from `DATABASE_URL` and dropped at the end.
//! - [`kafka`]: the shared broker, a private broker a test may stop and restart, unique names.
//! - [`platform`]: command-svc (`command_svc::serve`: the write API, the scheduler, the outbox
//!   relay) and projection-svc (`projection_svc::serve`: the consumer and the read API) started
//!   on `127.0.0.1:0` against one database, and shut down cleanly.
//! - [`api`]: a small HTTP client for both APIs (fresh `Idempotency-Key` per POST).
//! - [`truth`]: what the read side is compared with: the event store, the write side's
//!   `ledger_balances` table, and the fold of the log (`domain::Marketplace::replay`).
//! - [`eventually`]: polling with a deadline (never a bare sleep to wait for state).

pub mod api;
pub mod db;
pub mod kafka;
pub mod platform;
pub mod truth;

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] re-checks.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL_EVERY`] until it returns `Some`, and returns that; panics with
/// `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < deadline, "not within {deadline:?}: {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Logs to the test's output when `RUST_LOG` is set (`RUST_LOG=info cargo nextest run -p tests`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub use testkit::repo_root;
