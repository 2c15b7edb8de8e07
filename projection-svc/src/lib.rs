//! projection-svc: the read side of DSCM.
//!
//! - [`project`]: the projector core. [`project::Projector::apply_batch`] applies events to the
//!   PostgreSQL read models in the caller's transaction: per-stream dedupe, gap detection, the
//!   event history, ledger balances, aggregates folded with the domain's own `apply`
//!   ([`fold`]), and the read-your-writes watermark.
//! - [`consumer`]: the Kafka consumer (one PostgreSQL transaction per batch, offsets stored with
//!   the read models). [`envelope`]: the relay's CloudEvents envelope parsed back.
//! - [`replay`]: rebuild every read model from the event store into a new schema and switch
//!   to it atomically. [`schema`]: the versioned schemas `rm_v<N>` and `rm_active`.
//! - [`http`]: the read API (role-scoped, cursor pagination, `min_position`, problem+json).
//! - [`settings`], [`metrics`], [`event`] (the event as the projector sees it).

pub mod consumer;
pub mod envelope;
pub mod event;
pub mod fold;
pub mod http;
pub mod metrics;
pub mod project;
pub mod repair;
pub mod replay;
pub mod schema;
pub mod settings;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::settings::Settings;

pub use event::ProjectedEvent;
pub use project::{BatchOutcome, Gap, Projector};

pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(settings.database_url.expose())
        .await
}

/// Serves the read API on `listener` and, if Kafka is configured, runs the consumer beside it,
/// until `shutdown` completes or the consumer fails (then the server stops too and the error is
/// returned). Both are joined and their ends reported; neither is left running.
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (watermark_tx, watermark_rx) = tokio::sync::watch::channel(0_i64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (failed_tx, mut failed_rx) = tokio::sync::watch::channel(false);
    let consumer = settings.kafka.clone().map(|kafka| {
        let consumer = consumer::Consumer::new(pool.clone(), kafka, metrics.clone()).with_watermark(watermark_tx);
        tokio::spawn(async move {
            let result = consumer.run_until_stopped(stop_rx).await;
            if result.is_err() {
                let _ = failed_tx.send(true);
            }
            result
        })
    });
    if consumer.is_none() {
        tracing::warn!("DSCM_KAFKA_BROKERS is not set: serving the read API without a consumer");
    }
    // Fills in from the event store whatever Kafka does not deliver in time (repair.rs).
    let repair = tokio::spawn(
        repair::Repair::new(pool.clone(), settings.repair.clone(), metrics.clone()).run(stop_tx.subscribe()),
    );
    let state = http::AppState::new(pool, metrics, settings.min_position_wait_ms).with_watermark(watermark_rx);
    let served = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                _ = failed_rx.wait_for(|failed| *failed) => tracing::error!("consumer failed; stopping"),
            }
            let _ = stop_tx.send(true);
        })
        .await;
    tracing::info!(result = ?served, "http server stopped");
    if let Err(e) = repair.await {
        tracing::error!(error = %e, "repair task failed");
    }
    let consumer_result = match consumer {
        None => Ok(()),
        Some(handle) => match handle.await {
            Ok(Ok(())) => {
                tracing::info!("consumer stopped");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "consumer failed");
                Err(std::io::Error::other(e))
            }
            Err(e) => {
                tracing::error!(error = %e, "consumer task failed");
                Err(std::io::Error::other(e))
            }
        },
    };
    served.and(consumer_result)
}
