//! command-svc: the write side of DSCM.
//!
//! - [`http`]: the axum router — one endpoint per command, DTOs converted to domain commands at
//!   the edge, problem+json errors, `Idempotency-Key` on every POST, role checks.
//! - [`uow`]: the unit of work — a command and its reactions decided by `domain` and committed
//!   in one PostgreSQL transaction with the events, outbox rows, balance rows and the
//!   idempotent answer.
//! - [`scheduler`]: the durable deadline scheduler and the payout process manager, following
//!   the event log from positions stored in PostgreSQL.
//! - [`auth`]: API keys (hashed) and roles. [`settings`]: typed settings. [`clock`]: the
//!   injected clock. [`metrics`]: Prometheus counters.

pub mod auth;
pub mod clock;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod scheduler;
pub mod settings;
pub mod uow;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use domain::ctx::CommissionSchedule;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::uow::Executor;

/// This service's own tables, after the event store's (`event-store/migrations`).
static OWN_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The whole schema the service needs: the event store's migrations, then its own.
pub fn migrator() -> Migrator {
    let all = event_store::MIGRATOR.iter().chain(OWN_MIGRATIONS.iter()).cloned().collect();
    Migrator::with_migrations(all)
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(settings.database.url.expose())
        .await
}

/// The application state for a pool and a clock.
pub fn state(pool: PgPool, clock: Arc<dyn Clock>, settings: &Settings) -> AppState {
    let executor = Executor {
        pool: pool.clone(),
        clock,
        schedule: CommissionSchedule::default(),
        retries_max: settings.commands.retries_max,
        metrics: Arc::new(Metrics::default()),
    };
    AppState { pool, executor: Arc::new(executor), relay: Arc::default() }
}

/// Serve the API and, if enabled, run the scheduler and the outbox relay beside it, until
/// `shutdown` completes. All are joined and their ends reported; none is left running.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = settings.scheduler.enabled.then(|| {
        let scheduler = scheduler::Scheduler {
            executor: state.executor.clone(),
            settings: scheduler::SchedulerSettings {
                tick: Duration::from_millis(settings.scheduler.tick_ms.max(10)),
                auto_payout: settings.scheduler.auto_payout,
                ..scheduler::SchedulerSettings::default()
            },
        };
        tokio::spawn(scheduler.run(stop_rx))
    });
    let relay = settings.kafka.as_ref().map(|kafka| {
        let config =
            relay::RelayConfig { topic_prefix: kafka.topic_prefix.clone(), ..relay::RelayConfig::new(&kafka.brokers) };
        let relay = relay::Relay::with_metrics(state.pool.clone(), config, state.relay.clone());
        let mut stop = stop_tx.subscribe();
        tokio::spawn(relay.run(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }))
    });
    let http = run(listener, state, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    tracing::info!(result = ?http, "http server stopped");
    if let Some(handle) = relay {
        match handle.await {
            Ok(Ok(())) => tracing::info!("outbox relay stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "outbox relay failed"),
            Err(e) => tracing::error!(error = %e, "outbox relay task failed"),
        }
    }
    if let Some(handle) = scheduler {
        match handle.await {
            Ok(()) => tracing::info!("scheduler stopped"),
            Err(e) => tracing::error!(error = %e, "scheduler task failed"),
        }
    }
    http
}

/// Serve the API on `listener` until `shutdown` completes; in-flight requests finish first.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = http::router(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
