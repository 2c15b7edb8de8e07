//! Repair from the source of truth: when the watermark stays behind the event store's head for
//! longer than a grace period, the missing part of the log is read from the event store and
//! applied with the same [`Projector::apply_batch`] as the consumer.
//!
//! Kafka is the fast path, not the only one. A broker that lost its log (tansu's memory storage
//! restarts empty; a topic re-created), a consumer that never gets its partitions back after a
//! long stall, or a message lost between relay and broker would otherwise hold the watermark
//! still for good, and every `min_position` read behind it with it. Copies are harmless (the
//! per-stream sequence check drops them), and the log is read in position order, so streams
//! stay in sequence. `dscm_projection_repaired_total` counts what Kafka did not bring.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

use crate::event::ProjectedEvent;
use crate::metrics::Metrics;
use crate::project::{self, ProjectError, Projector};
use crate::schema;

#[derive(Debug, Clone)]
pub struct RepairSettings {
    /// How long the watermark may stand still behind the head before the store fills in.
    pub grace: Duration,
    /// How often to look.
    pub tick: Duration,
    /// Events read from the store per repair transaction.
    pub page_size: i64,
}

impl Default for RepairSettings {
    fn default() -> Self {
        RepairSettings { grace: Duration::from_secs(3), tick: Duration::from_millis(500), page_size: 1_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug)]
pub struct Repair {
    pool: PgPool,
    settings: RepairSettings,
    projector: Projector,
    metrics: Arc<Metrics>,
    /// The watermark last seen behind the head, and since when it has not moved.
    stalled: Option<(i64, Instant)>,
}

impl Repair {
    pub fn new(pool: PgPool, settings: RepairSettings, metrics: Arc<Metrics>) -> Repair {
        Repair { pool, settings, projector: Projector::new(metrics.clone()), metrics, stalled: None }
    }

    /// One look: repairs (and returns how many events it applied) only when the watermark has
    /// been behind the head, without moving, for the grace period.
    pub async fn pass(&mut self) -> Result<usize, RepairError> {
        let head = event_store::head_position(&self.pool).await?;
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
        schema::lock_active(&mut tx).await?;
        let watermark = project::watermark(&mut tx).await?;
        if watermark >= head {
            self.stalled = None;
            return Ok(0);
        }
        match self.stalled {
            Some((at, since)) if at == watermark && since.elapsed() >= self.settings.grace => {}
            Some((at, _)) if at == watermark => return Ok(0),
            _ => {
                self.stalled = Some((watermark, Instant::now()));
                return Ok(0);
            }
        }
        let page = event_store::read_log(&mut *tx, watermark, self.settings.page_size).await?;
        let batch: Vec<ProjectedEvent> = page.iter().map(ProjectedEvent::from).collect();
        let outcome = self.projector.apply_batch(&mut tx, &batch).await?;
        tx.commit().await?;
        self.metrics.add_repaired(outcome.applied as u64);
        tracing::warn!(
            from = watermark,
            to = outcome.watermark,
            applied = outcome.applied,
            "projection: watermark stalled; filled in from the event store"
        );
        self.stalled = None;
        Ok(outcome.applied)
    }

    /// Look every tick until `stop` turns true; failures are logged and retried next tick.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "projection repair pass failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.tick) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}
