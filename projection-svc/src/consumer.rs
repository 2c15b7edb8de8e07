//! The Kafka consumer: reads the `<prefix><aggregate_type>` topics (`dscm.job`, …) in a consumer
//! group and applies each batch (at most `batch_size_max` messages or `batch_wait_ms` after the first) in **one**
//! PostgreSQL transaction together with the offsets it consumed (`public.rm_offsets`). Kafka's own
//! offsets are committed after that, best effort: PostgreSQL is the source of truth, and on
//! (re)start or assignment every partition starts at the offset PostgreSQL holds.
//!
//! Delivery is at least once (ADR 0006): copies are dropped by the projector's per-stream
//! dedupe. An event that arrives before its predecessor (a gap) is not applied; the consumer
//! keeps reading, but stores no offset of that partition past the gap until the stream has caught
//! up (the missing event arrived later in the partition, or a replay rebuilt the models), so a
//! restart re-reads it. Gaps are logged, counted, and shown as `dscm_projection_unresolved_gaps`.
//! A message that is not an envelope is logged, counted and skipped (the event it may have
//! carried then shows up as a gap in its stream and a stalled watermark).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use crate::envelope;
use crate::event::ProjectedEvent;
use crate::metrics::Metrics;
use crate::project::{ProjectError, Projector};
use crate::schema::{self, SchemaError};
use crate::settings::KafkaSettings;

/// Gap events held at once; beyond this the consumer stops reading and only re-checks them.
pub const PENDING_GAPS_MAX: usize = 10_000;
/// How long a receive waits before the loop looks at shutdown and held gaps again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// The pause after a receive error.
const ERROR_PAUSE: Duration = Duration::from_millis(200);
const BACKOFF_INITIAL_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka client error")]
    Kafka(#[from] KafkaError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Project(#[from] ProjectError),
}

type PartitionKey = (String, i32);

/// The offsets PostgreSQL holds, shared with the rebalance callback.
#[derive(Debug, Default)]
struct Shared {
    offsets: HashMap<PartitionKey, i64>,
    revoked: Vec<PartitionKey>,
}

struct Ctx {
    shared: Arc<Mutex<Shared>>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    /// After librdkafka assigned partitions, assign them again at the offsets PostgreSQL holds
    /// (from the beginning when it holds none), not at Kafka's committed offsets.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut shared = match self.shared.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut at = TopicPartitionList::new();
                for e in tpl.elements() {
                    let offset = shared
                        .offsets
                        .get(&(e.topic().to_owned(), e.partition()))
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    if let Err(err) = at.add_partition_offset(e.topic(), e.partition(), offset) {
                        tracing::error!(error = %err, "building the assignment");
                    }
                }
                tracing::info!(partitions = at.count(), "partitions assigned; starting at PostgreSQL's offsets");
                if let Err(err) = consumer.assign(&at) {
                    tracing::error!(error = %err, "assigning partitions at PostgreSQL's offsets");
                }
            }
            Rebalance::Revoke(tpl) => {
                shared.revoked.extend(tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())));
            }
            Rebalance::Error(err) => tracing::error!(error = %err, "rebalance error"),
        }
    }
}

/// One consumed message.
#[derive(Debug)]
struct Polled {
    topic: String,
    partition: i32,
    offset: i64,
    event: Option<ProjectedEvent>,
}

/// A gap event the partition's stored offset is held behind.
#[derive(Debug, Clone)]
struct HeldGap {
    partition: PartitionKey,
    offset: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
}

/// The consumer of one database's read models. Run it with [`Consumer::run`] and join it.
#[derive(Debug)]
pub struct Consumer {
    pool: PgPool,
    settings: KafkaSettings,
    metrics: Arc<Metrics>,
    watermark: Option<watch::Sender<i64>>,
    projector: Projector,
    /// Per partition: the offset after the last message consumed.
    consumed: BTreeMap<PartitionKey, i64>,
    held: Vec<HeldGap>,
    /// Receive errors are logged at most every [`ERROR_LOG_INTERVAL`], with a count.
    errors: ErrorLog,
}

/// How often receive errors (a broker down: one per reconnect attempt) are logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct ErrorLog {
    logged_at: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn report(&mut self, error: &KafkaError) {
        if self.logged_at.is_some_and(|at| at.elapsed() < ERROR_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %error, suppressed = self.suppressed, "kafka receive error");
        self.logged_at = Some(Instant::now());
        self.suppressed = 0;
    }
}

impl Consumer {
    pub fn new(pool: PgPool, settings: KafkaSettings, metrics: Arc<Metrics>) -> Consumer {
        let projector = Projector::new(metrics.clone());
        Consumer {
            pool,
            settings,
            metrics,
            watermark: None,
            projector,
            consumed: BTreeMap::new(),
            held: Vec::new(),
            errors: ErrorLog::default(),
        }
    }

    /// Publish the watermark after every committed batch (wakes `min_position` waits).
    pub fn with_watermark(mut self, watermark: watch::Sender<i64>) -> Consumer {
        self.watermark = Some(watermark);
        self
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.settings.brokers)
            .set("group.id", &self.settings.group_id)
            .set("client.id", "dscm-projection")
            // Offsets are stored in PostgreSQL with the read models, then committed to Kafka by
            // hand; Kafka's are informational.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A partition PostgreSQL holds no offset for is read from its beginning.
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range,roundrobin")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            .set("max.poll.interval.ms", "300000")
            // Topics are created by the relay; notice new ones within 5 s.
            .set("allow.auto.create.topics", "false")
            .set("topic.metadata.refresh.interval.ms", "5000")
            // Read-your-writes latency: do not let the broker hold a fetch for long.
            .set("fetch.wait.max.ms", "50");
        config
    }

    /// Consumes until `shutdown` completes. A failed batch is retried (bounded exponential
    /// backoff) until it commits or shutdown comes; only a client that cannot be created or
    /// subscribed returns an error. Stopping between or inside batches is safe: an uncommitted
    /// batch is read again from PostgreSQL's offsets.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ConsumerError> {
        schema::ensure(&self.pool).await?;
        let shared = Arc::new(Mutex::new(Shared { offsets: self.load_offsets().await?, revoked: Vec::new() }));
        let consumer: StreamConsumer<Ctx> = self.client_config().create_with_context(Ctx { shared: shared.clone() })?;
        let topics = self.settings.topics();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        tracing::info!(group = %self.settings.group_id, ?topics, "consumer subscribed");
        let mut shutdown = pin!(shutdown);
        loop {
            self.forget_revoked(&shared);
            if self.held.len() >= PENDING_GAPS_MAX {
                // Too many held gaps: stop reading, wait for a replay (or the missing events).
                tracing::error!(held = self.held.len(), "too many unresolved gaps; waiting for a replay");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let Some(()) = self.commit_with_retry(&consumer, &shared, Vec::new(), &mut shutdown).await else {
                    break;
                };
                continue;
            }
            let Some(batch) = self.collect(&consumer, &mut shutdown).await else { break };
            if batch.is_empty() && self.held.is_empty() {
                continue;
            }
            let Some(()) = self.commit_with_retry(&consumer, &shared, batch, &mut shutdown).await else { break };
        }
        tracing::info!("consumer stopping");
        Ok(())
    }

    /// [`Consumer::run`] until `stop` turns true.
    pub async fn run_until_stopped(self, mut stop: watch::Receiver<bool>) -> Result<(), ConsumerError> {
        self.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    }

    async fn load_offsets(&self) -> Result<HashMap<PartitionKey, i64>, sqlx::Error> {
        let rows = sqlx::query("SELECT topic, partition, next_offset FROM public.rm_offsets WHERE group_id = $1")
            .bind(&self.settings.group_id)
            .fetch_all(&self.pool)
            .await?;
        let mut offsets = HashMap::new();
        for row in rows {
            offsets.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
        }
        Ok(offsets)
    }

    fn forget_revoked(&mut self, shared: &Mutex<Shared>) {
        let revoked = match shared.lock() {
            Ok(mut guard) => std::mem::take(&mut guard.revoked),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().revoked),
        };
        for key in revoked {
            self.consumed.remove(&key);
            self.held.retain(|g| g.partition != key);
        }
    }

    /// A batch: the first message (waiting at most [`IDLE_POLL`]), then whatever arrives within
    /// `batch_wait_ms`, at most `batch_size_max`. `None` when shutdown came.
    async fn collect<F: Future<Output = ()>>(
        &mut self,
        consumer: &StreamConsumer<Ctx>,
        shutdown: &mut Pin<&mut F>,
    ) -> Option<Vec<Polled>> {
        let mut batch = Vec::new();
        let first = tokio::select! {
            biased;
            () = shutdown.as_mut() => return None,
            first = tokio::time::timeout(IDLE_POLL, consumer.recv()) => first,
        };
        match first {
            Err(_) => return Some(batch),
            Ok(Err(e)) => {
                self.errors.report(&e);
                // librdkafka reconnects by itself; do not spin on its error events.
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => return None,
                    () = tokio::time::sleep(ERROR_PAUSE) => {}
                }
                return Some(batch);
            }
            Ok(Ok(m)) => batch.push(self.parse(&m)),
        }
        let deadline = Instant::now() + Duration::from_millis(self.settings.batch_wait_ms);
        while batch.len() < self.settings.batch_size_max {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            match tokio::time::timeout(left, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => self.errors.report(&e),
                Ok(Ok(m)) => batch.push(self.parse(&m)),
            }
        }
        Some(batch)
    }

    fn parse(&self, m: &BorrowedMessage<'_>) -> Polled {
        let event = match m.payload().map(envelope::parse) {
            Some(Ok(event)) => Some(event),
            Some(Err(e)) => {
                self.metrics.add_malformed();
                tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = %e,
                    "message is not an event envelope; skipped");
                None
            }
            None => {
                self.metrics.add_malformed();
                tracing::error!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    "message without a value; skipped"
                );
                None
            }
        };
        Polled { topic: m.topic().to_owned(), partition: m.partition(), offset: m.offset(), event }
    }

    /// Applies `batch` until it commits; `None` when shutdown came first.
    async fn commit_with_retry<F: Future<Output = ()>>(
        &mut self,
        consumer: &StreamConsumer<Ctx>,
        shared: &Mutex<Shared>,
        batch: Vec<Polled>,
        shutdown: &mut Pin<&mut F>,
    ) -> Option<()> {
        let mut failures: u32 = 0;
        loop {
            match self.apply(&batch).await {
                Ok(stored) => {
                    self.after_commit(consumer, shared, stored);
                    return Some(());
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.add_batch_failure();
                    tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), failures, "batch failed; retrying");
                    let wait = BACKOFF_INITIAL_MS.saturating_mul(1 << failures.min(16)).min(BACKOFF_MAX_MS);
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => return None,
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                }
            }
        }
    }

    /// One transaction: the events, the re-check of held gaps and the offsets. Returns the
    /// offsets stored and the watermark.
    async fn apply(&mut self, batch: &[Polled]) -> Result<(BTreeMap<PartitionKey, i64>, i64), ConsumerError> {
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
        schema::lock_active(&mut tx).await?;
        let (events, origin): (Vec<ProjectedEvent>, Vec<&Polled>) =
            batch.iter().filter_map(|m| m.event.clone().map(|e| (e, m))).unzip();
        let outcome = self.projector.apply_batch(&mut tx, &events).await?;
        // What this attempt would keep in memory; applied only after the commit.
        let mut held = self.held.clone();
        for gap in &outcome.gaps {
            if let Some(m) = origin.get(gap.index) {
                held.push(HeldGap {
                    partition: (m.topic.clone(), m.partition),
                    offset: m.offset,
                    aggregate_type: gap.aggregate_type.clone(),
                    aggregate_id: gap.aggregate_id.clone(),
                    sequence: gap.sequence,
                });
            }
        }
        let held = resolve(&mut tx, held).await?;
        let mut consumed = self.consumed.clone();
        for m in batch {
            let next = consumed.entry((m.topic.clone(), m.partition)).or_insert(m.offset + 1);
            *next = (*next).max(m.offset + 1);
        }
        // Per partition: up to the first held gap, else everything consumed.
        let mut stored: BTreeMap<PartitionKey, i64> = BTreeMap::new();
        for (key, next) in &consumed {
            let hold = held.iter().filter(|g| &g.partition == key).map(|g| g.offset).min();
            stored.insert(key.clone(), hold.map_or(*next, |h| h.min(*next)));
        }
        if !stored.is_empty() {
            let (topics, (partitions, offsets)): (Vec<&str>, (Vec<i32>, Vec<i64>)) =
                stored.iter().map(|((t, p), o)| (t.as_str(), (*p, *o))).unzip();
            sqlx::query(
                "INSERT INTO public.rm_offsets (group_id, topic, partition, next_offset)
                 SELECT $1, t, p, o FROM unnest($2::text[], $3::int[], $4::bigint[]) AS x(t, p, o)
                 ON CONFLICT (group_id, topic, partition) DO UPDATE
                    SET next_offset = GREATEST(rm_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()",
            )
            .bind(&self.settings.group_id)
            .bind(&topics)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.held = held;
        self.consumed = consumed;
        self.metrics.set_unresolved_gaps(self.held.len());
        Ok((stored, outcome.watermark))
    }

    fn after_commit(
        &mut self,
        consumer: &StreamConsumer<Ctx>,
        shared: &Mutex<Shared>,
        (stored, watermark): (BTreeMap<PartitionKey, i64>, i64),
    ) {
        if let Some(tx) = &self.watermark {
            tx.send_if_modified(|w| {
                let newer = watermark > *w;
                *w = (*w).max(watermark);
                newer
            });
        }
        if stored.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        {
            let mut shared = match shared.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            for ((topic, partition), offset) in &stored {
                let known = shared.offsets.entry((topic.clone(), *partition)).or_insert(*offset);
                *known = (*known).max(*offset);
                if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                    tracing::warn!(error = %e, "building the offset commit");
                }
            }
        }
        // Best effort: PostgreSQL already holds these offsets.
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            self.metrics.add_kafka_commit_failure();
            tracing::debug!(error = %e, "committing offsets to Kafka failed");
        }
    }
}

/// Keeps the held gaps whose stream has not reached their sequence yet.
async fn resolve(conn: &mut sqlx::PgConnection, held: Vec<HeldGap>) -> Result<Vec<HeldGap>, sqlx::Error> {
    if held.is_empty() {
        return Ok(held);
    }
    let (types, ids): (Vec<&str>, Vec<&str>) =
        held.iter().map(|g| (g.aggregate_type.as_str(), g.aggregate_id.as_str())).unzip();
    let rows = sqlx::query(
        "SELECT s.aggregate_type, s.aggregate_id, s.last_sequence FROM rm_streams s
           JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON s.aggregate_type = k.t AND s.aggregate_id = k.i",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut last: HashMap<(String, String), i64> = HashMap::new();
    for row in rows {
        last.insert((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    }
    Ok(held
        .into_iter()
        .filter(|g| last.get(&(g.aggregate_type.clone(), g.aggregate_id.clone())).copied().unwrap_or(0) < g.sequence)
        .collect())
}
