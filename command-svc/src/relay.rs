//! The outbox relay: publishes every committed event to Kafka, at least once, in per-aggregate
//! order (docs/adr/0006-kafka-envelope-and-relay.md).
//!
//! One loop, one task. Each round, in one READ COMMITTED transaction:
//! 1. `pg_try_advisory_xact_lock(RELAY_LOCK_KEY)`: only one relay of a database works at a time;
//!    the others find the lock taken and wait a poll interval. The lock lives as long as the
//!    transaction, so a crashed or disconnected relay releases it with no lease to expire.
//! 2. [`event_store::read_unpublished`]: the oldest unpublished events, at most
//!    [`RelayConfig::batch_size_max`], in position order.
//! 3. Send each to topic `<prefix><aggregate_type>`, key = aggregate id, value = the envelope
//!    ([`encode_envelope`]), and wait until the broker has acknowledged every one.
//! 4. [`event_store::mark_published`], then `COMMIT`, which releases the lock.
//!
//! A batch is read only after the previous batch's transaction committed, so batches follow one
//! another in position order whichever relay takes them; within a batch, an idempotent producer
//! keeps the order of one key's messages (same key, same partition). Any failure rolls the round
//! back: nothing is marked, the Kafka clients are rebuilt and topics created again (a broker with
//! memory storage forgets them on restart), and the round is retried after a bounded exponential
//! backoff. A crash between the acknowledgement and the `COMMIT` publishes the batch again:
//! consumers dedupe by event id.
//!
//! Commands never wait for the relay: they only write outbox rows. [`RelayMetrics::lag`] says how
//! far behind the relay is.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::Aggregate;
use domain::Timestamp;
use event_store::StoredEvent;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The aggregate types of `domain`, one topic each, created when the relay connects.
pub const AGGREGATE_TYPES: [&str; 7] = [
    domain::job::Job::TYPE,
    domain::escrow::Escrow::TYPE,
    domain::challenge::Challenge::TYPE,
    domain::dispute::Dispute::TYPE,
    domain::worker::Worker::TYPE,
    domain::funds::Deposit::TYPE,
    domain::funds::Payout::TYPE,
];

/// The advisory lock that makes one relay per database the publisher of a round: "dscmrlay".
/// Advisory locks are per database, so each test database has its own.
pub const RELAY_LOCK_KEY: i64 = 0x6473_636d_726c_6179;

/// The CloudEvents `source` of every event.
pub const EVENT_SOURCE: &str = "dscm";

/// The Kafka `content-type` header: CloudEvents structured mode, JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The most events one round may publish; also keeps a batch far below librdkafka's queue limit
/// (`queue.buffering.max.messages`, 100 000), so `send` never meets a full queue.
pub const BATCH_SIZE_LIMIT: i64 = 10_000;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:59092`.
    pub brokers: String,
    /// Topics are `<topic_prefix><aggregate_type>`; tests use a unique prefix each.
    pub topic_prefix: String,
    /// Partitions of each topic the relay creates. One aggregate's events all go to one partition.
    pub partitions: i32,
    /// Replication factor of each topic the relay creates (1 for the single local broker).
    pub replication_factor: i32,
    /// Events per round, 1..=[`BATCH_SIZE_LIMIT`].
    pub batch_size_max: i64,
    /// How long an idle relay (nothing to publish, or another relay publishing) waits.
    pub poll_interval_ms: u64,
    /// The first wait after a failed round; it doubles per consecutive failure...
    pub backoff_initial_ms: u64,
    /// ...up to this.
    pub backoff_max_ms: u64,
    /// How long a message may wait for the broker's acknowledgement (`message.timeout.ms`), and
    /// the timeout of topic creation: the longest a round can take against a dead broker.
    pub message_timeout_ms: u64,
    /// `linger.ms`: how long the producer waits to fill a request. A round sends its whole batch
    /// at once, so a few milliseconds suffice.
    pub linger_ms: u64,
}

impl RelayConfig {
    /// Production-like defaults for `brokers`, with topics `dscm.<aggregate_type>`.
    pub fn new(brokers: impl Into<String>) -> RelayConfig {
        RelayConfig {
            brokers: brokers.into(),
            topic_prefix: "dscm.".to_owned(),
            partitions: 3,
            replication_factor: 1,
            batch_size_max: 500,
            poll_interval_ms: 100,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            message_timeout_ms: 10_000,
            linger_ms: 2,
        }
    }

    pub fn topic(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}", self.topic_prefix)
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "dscm-outbox-relay")
            // No duplicates from the producer's own retries, and one key's messages stay in
            // order even with several requests in flight (at most 5 with idempotence).
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("compression.type", "none")
            // The Java client's partitioner: the same key lands on the same partition whichever
            // client produced it.
            .set("partitioner", "murmur2_random");
        config
    }

    fn admin_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", "dscm-outbox-relay-admin");
        config
    }

    fn check(&self) -> Result<(), RelayError> {
        if !(1..=BATCH_SIZE_LIMIT).contains(&self.batch_size_max) {
            return Err(RelayError::Config(format!(
                "batch_size_max must be in 1..={BATCH_SIZE_LIMIT}, not {}",
                self.batch_size_max
            )));
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err(RelayError::Config("partitions and replication_factor must be at least 1".to_owned()));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err(RelayError::Config("need 0 < backoff_initial_ms <= backoff_max_ms".to_owned()));
        }
        Ok(())
    }
}

/// Why a round failed (it is retried), or why the relay cannot run at all (`Config`).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay configuration: {0}")]
    Config(String),
    #[error("kafka client error")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    #[error("event at position {position} was not delivered")]
    Delivery {
        position: i64,
        #[source]
        error: KafkaError,
    },
    #[error("the producer dropped the delivery report of position {position}")]
    DeliveryCancelled { position: i64 },
    #[error("encoding the envelope of position {position}")]
    Encode {
        position: i64,
        #[source]
        error: serde_json::Error,
    },
    #[error("outbox database error")]
    Database(#[from] sqlx::Error),
}

/// What the relay has done, for `/metrics` and for tests.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    published: AtomicU64,
    lag: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RelayMetrics {
    /// Events this relay has published and marked.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// The log's head position minus the position up to which every event is published, as last
    /// measured (each round, by whichever relay).
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Rounds that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last failure, with its causes; cleared by the next round that publishes.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map(|e| e.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn set_last_error(&self, error: Option<String>) {
        match self.last_error.lock() {
            Ok(mut slot) => *slot = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let error = u8::from(self.last_error().is_some());
        format!(
            "# HELP dscm_relay_published_total Events published to Kafka and marked in the outbox.\n\
             # TYPE dscm_relay_published_total counter\n\
             dscm_relay_published_total {}\n\
             # HELP dscm_relay_lag_events Log head position minus the last position published without gaps.\n\
             # TYPE dscm_relay_lag_events gauge\n\
             dscm_relay_lag_events {}\n\
             # HELP dscm_relay_failures_total Relay rounds that failed and were retried.\n\
             # TYPE dscm_relay_failures_total counter\n\
             dscm_relay_failures_total {}\n\
             # HELP dscm_relay_failing Whether the last round failed.\n\
             # TYPE dscm_relay_failing gauge\n\
             dscm_relay_failing {error}\n",
            self.published(),
            self.lag(),
            self.failures(),
        )
    }
}

/// The outbox relay of one database. Run it with [`Relay::run`] in one task and join it.
#[derive(Debug)]
pub struct Relay {
    pool: PgPool,
    config: RelayConfig,
    metrics: Arc<RelayMetrics>,
}

enum Round {
    Published,
    Idle,
}

impl Relay {
    pub fn new(pool: PgPool, config: RelayConfig) -> Relay {
        Relay { pool, config, metrics: Arc::default() }
    }

    /// A relay that reports into `metrics` (shared with the HTTP `/metrics` endpoint).
    pub fn with_metrics(pool: PgPool, config: RelayConfig, metrics: Arc<RelayMetrics>) -> Relay {
        Relay { pool, config, metrics }
    }

    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Publishes until `shutdown` completes. A failed round is retried forever (the outbox keeps
    /// everything); only an invalid configuration returns an error. Stopping mid-round is safe:
    /// the round's transaction rolls back and its events are published again later.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        self.config.check()?;
        // Fails now on a bad client setting rather than on every round.
        let mut kafka = Some(Kafka::new(&self.config)?);
        let mut shutdown = pin!(shutdown);
        let mut failures_in_a_row: u32 = 0;
        loop {
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => break,
                outcome = self.round(&mut kafka) => outcome,
            };
            let wait_ms = match outcome {
                Ok(Round::Published) => {
                    if failures_in_a_row > 0 {
                        tracing::info!(failures_in_a_row, "outbox relay recovered");
                    }
                    failures_in_a_row = 0;
                    self.metrics.set_last_error(None);
                    continue;
                }
                Ok(Round::Idle) => {
                    failures_in_a_row = 0;
                    self.metrics.set_last_error(None);
                    self.config.poll_interval_ms
                }
                Err(error) => {
                    failures_in_a_row = failures_in_a_row.saturating_add(1);
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    let report = error_chain(&error);
                    tracing::warn!(error = %report, failures_in_a_row, "outbox relay round failed");
                    self.metrics.set_last_error(Some(report));
                    // Rebuild the clients: after a broker restart the producer's id and
                    // sequence numbers are unknown to the broker, and topics may be gone.
                    if let Some(old) = kafka.take() {
                        // Dropping a producer flushes for up to 500 ms: not on this thread.
                        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
                    }
                    backoff_ms(&self.config, failures_in_a_row)
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
        if let Some(old) = kafka.take() {
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
        Ok(())
    }

    async fn round(&self, kafka: &mut Option<Kafka>) -> Result<Round, RelayError> {
        self.measure_lag().await?;
        let kafka = match kafka {
            Some(kafka) => kafka,
            None => kafka.insert(Kafka::new(&self.config)?),
        };
        // Every aggregate type's topic, once per set of clients.
        kafka.ensure_topics(&self.config, AGGREGATE_TYPES.into_iter()).await?;
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
        let leader: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(RELAY_LOCK_KEY).fetch_one(&mut *tx).await?;
        if !leader {
            tx.rollback().await?;
            return Ok(Round::Idle);
        }
        let batch = event_store::read_unpublished(&mut *tx, self.config.batch_size_max).await?;
        if batch.is_empty() {
            tx.rollback().await?;
            return Ok(Round::Idle);
        }
        kafka.ensure_topics(&self.config, batch.iter().map(|e| e.aggregate_type.as_str())).await?;
        kafka.publish(&self.config, &batch).await?;
        let positions: Vec<i64> = batch.iter().map(|e| e.position).collect();
        event_store::mark_published(&mut *tx, &positions).await?;
        tx.commit().await?;
        self.metrics.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.measure_lag().await?;
        Ok(Round::Published)
    }

    async fn measure_lag(&self) -> Result<(), sqlx::Error> {
        let lag: i64 = sqlx::query_scalar(
            "SELECT head.position - COALESCE(
                        (SELECT min(position) - 1 FROM outbox WHERE published_at IS NULL), head.position)
               FROM event_log_head head WHERE head.id",
        )
        .fetch_one(&self.pool)
        .await?;
        self.metrics.lag.store(u64::try_from(lag).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}

/// `backoff_initial_ms * 2^(failures - 1)`, at most `backoff_max_ms`.
fn backoff_ms(config: &RelayConfig, failures_in_a_row: u32) -> u64 {
    let doublings = failures_in_a_row.saturating_sub(1).min(32);
    config.backoff_initial_ms.saturating_mul(1u64 << doublings).min(config.backoff_max_ms)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut report = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        report.push_str(": ");
        report.push_str(&cause.to_string());
        source = cause.source();
    }
    report
}

/// The Kafka clients of a relay, and the topics known to exist since they were created.
struct Kafka {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    topics: BTreeSet<String>,
}

impl Kafka {
    /// New clients; they connect when first used.
    fn new(config: &RelayConfig) -> Result<Kafka, RelayError> {
        Ok(Kafka {
            producer: config.producer_config().create()?,
            admin: config.admin_config().create()?,
            topics: BTreeSet::new(),
        })
    }

    /// Creates the topics of these aggregate types unless they exist. tansu does not create
    /// topics on first use, and neither should production Kafka.
    async fn ensure_topics<'a>(
        &mut self,
        config: &RelayConfig,
        aggregate_types: impl Iterator<Item = &'a str>,
    ) -> Result<(), RelayError> {
        let missing: BTreeSet<String> =
            aggregate_types.map(|t| config.topic(t)).filter(|topic| !self.topics.contains(topic)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|topic| NewTopic::new(topic, config.partitions, TopicReplication::Fixed(config.replication_factor)))
            .collect();
        let timeout = Duration::from_millis(config.message_timeout_ms);
        let options = AdminOptions::new().request_timeout(Some(timeout)).operation_timeout(Some(timeout));
        for result in self.admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(RelayError::CreateTopic { topic, code }),
            }
        }
        self.topics.extend(missing);
        Ok(())
    }

    /// Sends the whole batch, then waits for every acknowledgement.
    async fn publish(&self, config: &RelayConfig, batch: &[StoredEvent]) -> Result<(), RelayError> {
        let mut deliveries = Vec::with_capacity(batch.len());
        for event in batch {
            let topic = config.topic(&event.aggregate_type);
            let value =
                encode_envelope(event).map_err(|error| RelayError::Encode { position: event.position, error })?;
            let event_id = event.event_id.to_string();
            let position = event.position.to_string();
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header { key: "content-type", value: Some(CONTENT_TYPE) })
                .insert(Header { key: "dscm-event-id", value: Some(&event_id) })
                .insert(Header { key: "dscm-event-type", value: Some(&event.event_type) })
                .insert(Header { key: "dscm-position", value: Some(&position) });
            let record = FutureRecord::to(&topic).key(&event.aggregate_id).payload(&value).headers(headers);
            let delivery = self.producer.send_result(record).map_err(|(error, _)| RelayError::Kafka(error))?;
            deliveries.push((event.position, delivery));
        }
        for (position, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(RelayError::Delivery { position, error }),
                Err(_) => return Err(RelayError::DeliveryCancelled { position }),
            }
        }
        Ok(())
    }
}

/// The Kafka message value of an event: a CloudEvents 1.0 event in JSON (structured mode),
/// with DSCM's extensions. Field order is fixed; the format is frozen by a snapshot test.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    specversion: &'static str,
    id: Uuid,
    source: &'static str,
    #[serde(rename = "type")]
    event_type: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    aggregatetype: &'a str,
    sequence: i64,
    position: i64,
    eventversion: i32,
    hash: String,
    prevhash: String,
    actor: &'a str,
    commandid: Uuid,
    correlationid: Uuid,
    causationid: Uuid,
    data: &'a Value,
}

/// The JSON bytes of an event's envelope.
pub fn encode_envelope(event: &StoredEvent) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Envelope {
        specversion: "1.0",
        id: event.event_id,
        source: EVENT_SOURCE,
        event_type: &event.event_type,
        subject: &event.aggregate_id,
        time: rfc3339_micros(event.recorded_at_unix_micros),
        datacontenttype: "application/json",
        aggregatetype: &event.aggregate_type,
        sequence: event.sequence,
        position: event.position,
        eventversion: event.event_version,
        hash: hex::encode(event.hash),
        prevhash: hex::encode(event.prev_hash),
        actor: &event.metadata.actor,
        commandid: event.metadata.command_id,
        correlationid: event.metadata.correlation_id,
        causationid: event.metadata.causation_id,
        data: &event.payload,
    })
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-26T00:00:00.123456Z`: exactly the
/// `recorded_at` that the hash covers.
fn rfc3339_micros(unix_micros: i64) -> String {
    // Timestamp prints `YYYY-MM-DDTHH:MM:SS.mmmZ`; keep the seconds, write the microseconds.
    let millis = Timestamp(unix_micros.div_euclid(1000)).to_string();
    let seconds = millis.strip_suffix('Z').and_then(|s| s.rsplit_once('.')).map_or(millis.as_str(), |(s, _)| s);
    format!("{seconds}.{:06}Z", unix_micros.rem_euclid(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_store::EventMetadata;
    use serde_json::json;

    fn event() -> StoredEvent {
        StoredEvent {
            position: 42,
            aggregate_type: "escrow".to_owned(),
            aggregate_id: "0b6f6c55-6a3c-4c4e-9d3e-1f0e5a1b2c3d".to_owned(),
            sequence: 3,
            event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            event_type: "EscrowHeld".to_owned(),
            event_version: 1,
            payload: json!({"amount": {"minor_units": 1500, "currency": "EUR"}}),
            metadata: EventMetadata {
                actor: "client:7".to_owned(),
                command_id: Uuid::from_u128(2),
                correlation_id: Uuid::from_u128(3),
                causation_id: Uuid::from_u128(4),
            },
            recorded_at_unix_micros: 1_795_651_200_123_456,
            prev_hash: [0xab; 32],
            hash: [0x01; 32],
        }
    }

    /// The envelope is read by other services and languages: changing it is a breaking change.
    #[test]
    fn the_envelope_format_is_frozen() {
        let bytes = encode_envelope(&event()).expect("encode");
        let expected = concat!(
            r#"{"specversion":"1.0","id":"01900000-0000-7000-8000-000000000001","source":"dscm","#,
            r#""type":"EscrowHeld","subject":"0b6f6c55-6a3c-4c4e-9d3e-1f0e5a1b2c3d","#,
            r#""time":"2026-11-26T00:00:00.123456Z","datacontenttype":"application/json","#,
            r#""aggregatetype":"escrow","sequence":3,"position":42,"eventversion":1,"#,
            r#""hash":"0101010101010101010101010101010101010101010101010101010101010101","#,
            r#""prevhash":"abababababababababababababababababababababababababababababababab","#,
            r#""actor":"client:7","commandid":"00000000-0000-0000-0000-000000000002","#,
            r#""correlationid":"00000000-0000-0000-0000-000000000003","#,
            r#""causationid":"00000000-0000-0000-0000-000000000004","#,
            r#""data":{"amount":{"currency":"EUR","minor_units":1500}}}"#,
        );
        assert_eq!(String::from_utf8(bytes).expect("utf-8"), expected);
    }

    #[test]
    fn times_keep_their_microseconds() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(1_795_651_200_000_001), "2026-11-26T00:00:00.000001Z");
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let config = RelayConfig { backoff_initial_ms: 100, backoff_max_ms: 1_000, ..RelayConfig::new("x") };
        let waits: Vec<u64> = (1..=6).map(|n| backoff_ms(&config, n)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff_ms(&config, u32::MAX), 1_000);
    }
}
