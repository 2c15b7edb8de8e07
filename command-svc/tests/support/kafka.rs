//! Kafka for the relay tests: the shared tansu broker (`KAFKA_BROKERS`, else the one
//! `infra/kafka.sh` runs), a private broker that a test may stop and restart, unique names, a
//! consumer with a fresh group and manual commits, and polling with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

/// How long a consumer that has what it waited for keeps listening for more (duplicates).
pub const QUIET: Duration = Duration::from_secs(1);

pub use testkit::kafka::{PrivateBroker, shared_brokers};
pub use testkit::unique;

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub envelope: Value,
}

impl Received {
    pub fn event_id(&self) -> &str {
        self.envelope["id"].as_str().unwrap_or_default()
    }
}

/// Consumes `topics` from the beginning with a fresh consumer group until `done` holds for what
/// was received, then on until nothing arrives for [`QUIET`] (so that a duplicate published
/// after the last original shows), commits the offsets (manual commit) and returns the messages
/// in arrival order. Panics at the deadline.
///
/// Why not count with the partitions' high watermarks: tansu 0.6.0 under-reports them (by 1 to 3
/// per partition after a few batches) although a consumer reads every offset.
pub async fn consume_until(
    brokers: &str,
    topics: &[String],
    deadline: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("relay-test-group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .expect("consumer");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).expect("subscribe");
    let started = Instant::now();
    let mut received = Vec::new();
    let mut done_at: Option<Instant> = None;
    loop {
        if done_at.is_none() && done(&received) {
            done_at = Some(Instant::now());
        }
        let wait = match done_at {
            Some(at) => match QUIET.checked_sub(at.elapsed()) {
                Some(left) => left,
                None => break,
            },
            None => {
                let left = deadline.checked_sub(started.elapsed()).unwrap_or_else(|| {
                    panic!(
                        "consumed {} messages in {deadline:?}, the condition still fails: {received:#?}",
                        received.len()
                    )
                });
                left.min(Duration::from_millis(500))
            }
        };
        let Ok(message) = tokio::time::timeout(wait, consumer.recv()).await else {
            continue;
        };
        let message = message.expect("consume");
        let mut headers = BTreeMap::new();
        if let Some(all) = message.headers() {
            for header in all.iter() {
                let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                headers.insert(header.key.to_owned(), value);
            }
        }
        received.push(Received {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().expect("every message has a key")).into_owned(),
            headers,
            envelope: serde_json::from_slice(message.payload().expect("payload")).expect("envelope is JSON"),
        });
    }
    if !received.is_empty() {
        consumer.commit_consumer_state(CommitMode::Sync).expect("commit offsets");
    }
    received
}

/// Polls `check` every 20 ms until it holds; panics with `what` at the deadline.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < deadline, "not within {deadline:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
