//! Kafka for the consumer tests: the shared tansu broker (`KAFKA_BROKERS`, else the one
//! `infra/kafka.sh` runs), unique topic prefixes and groups, the real outbox relay, a bare
//! producer that publishes chosen events (copies, holes), and a consumer task to stop or kill.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use command_svc::relay::{Relay, RelayConfig, RelayError, encode_envelope};
use event_store::StoredEvent;
use projection_svc::consumer::{Consumer, ConsumerError};
use projection_svc::metrics::Metrics;
use projection_svc::settings::KafkaSettings;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use testkit::kafka::PARTITIONS;
pub use testkit::unique;

/// The shared broker (testkit: `KAFKA_BROKERS`, else the one `infra/kafka.sh` runs).
pub fn brokers() -> String {
    testkit::kafka::shared_brokers()
}

/// Consumer settings on a fresh prefix and group: small batches, so a run has many.
pub fn settings() -> KafkaSettings {
    KafkaSettings {
        topic_prefix: format!("{}.", unique("dscm-proj-test")),
        group_id: unique("projection-test"),
        batch_size_max: 25,
        batch_wait_ms: 20,
        ..KafkaSettings::new(brokers())
    }
}

/// Creates the topics of every aggregate type (the relay does the same when it starts).
pub async fn create_topics(settings: &KafkaSettings) {
    testkit::kafka::create_topics(&settings.brokers, &settings.topic_prefix, &command_svc::relay::AGGREGATE_TYPES)
        .await;
}

pub struct RunningRelay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl RunningRelay {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("relay task").expect("relay");
    }
}

/// The real outbox relay, publishing to the consumer's topics.
pub fn spawn_relay(pool: &PgPool, settings: &KafkaSettings) -> RunningRelay {
    let config = RelayConfig {
        topic_prefix: settings.topic_prefix.clone(),
        partitions: PARTITIONS,
        poll_interval_ms: 20,
        backoff_initial_ms: 50,
        backoff_max_ms: 500,
        message_timeout_ms: 5_000,
        ..RelayConfig::new(settings.brokers.clone())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Relay::new(pool.clone(), config).run(async move {
        let _ = stopped.await;
    }));
    RunningRelay { stop: Some(stop), task }
}

/// Publishes exactly these events, in this order, as the relay would (same envelope, key and
/// partitioner). Returns each one's (partition, offset).
pub async fn publish(settings: &KafkaSettings, events: &[StoredEvent]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let mut delivered = Vec::new();
    for e in events {
        let value = encode_envelope(e).expect("envelope");
        let topic = settings.topic(&e.aggregate_type);
        let record = FutureRecord::to(&topic).key(&e.aggregate_id).payload(&value);
        let delivery = producer.send(record, Duration::from_secs(10)).await.map_err(|(err, _)| err).expect("delivered");
        delivered.push((delivery.partition, delivery.offset));
    }
    delivered
}

pub struct RunningConsumer {
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), ConsumerError>>,
}

impl RunningConsumer {
    /// Asks it to stop and joins it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("consumer task").expect("consumer");
    }

    /// Kills it wherever it is (mid-batch included), like a crashed process.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub fn spawn_consumer(pool: &PgPool, settings: &KafkaSettings) -> RunningConsumer {
    // `RUST_LOG=projection_svc=debug` shows what the consumer does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = watch::channel(false);
    let consumer = Consumer::new(pool.clone(), settings.clone(), metrics.clone());
    let task = tokio::spawn(consumer.run_until_stopped(stopped));
    RunningConsumer { metrics, stop, task }
}
