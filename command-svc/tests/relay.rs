//! The outbox relay against a real tansu broker (`infra/kafka.sh`) and real PostgreSQL: every
//! committed event reaches Kafka, in per-aggregate order, with its envelope; two relays do not
//! publish twice; a dead broker does not stop commands, and the relay catches up when it returns.
//! Each test has its own database, topic prefix and consumer groups.

#[path = "support/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command_svc::relay::{Relay, RelayConfig, RelayMetrics, encode_envelope};
use event_store::{Commit, EventMetadata, NewEvent, StoredEvent, StreamAppend};
use kafka::{PrivateBroker, Received, consume_until, eventually, shared_brokers, unique};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);
/// `recorded_at` of the n-th test commit is this plus n microseconds: 2026-11-26T00:00:00.00000nZ.
const T0_MICROS: i64 = 1_795_651_200_000_000;

type Aggregate = (&'static str, String);

fn aggregates() -> Vec<Aggregate> {
    let id = || Uuid::new_v4().to_string();
    vec![("job", id()), ("job", id()), ("escrow", id()), ("escrow", id()), ("worker", id())]
}

fn config(brokers: &str) -> RelayConfig {
    RelayConfig {
        topic_prefix: format!("{}.", unique("dscm-test")),
        poll_interval_ms: 20,
        backoff_initial_ms: 50,
        backoff_max_ms: 500,
        message_timeout_ms: 3_000,
        ..RelayConfig::new(brokers)
    }
}

fn topics(config: &RelayConfig) -> Vec<String> {
    command_svc::relay::AGGREGATE_TYPES.iter().map(|t| config.topic(t)).collect()
}

/// The events written so far and each aggregate's last sequence.
#[derive(Debug, Default)]
struct Writer {
    sequences: BTreeMap<Aggregate, i64>,
    commits: i64,
    events: usize,
}

impl Writer {
    /// `count` commits round-robin over `aggregates`: commit n appends n % 3 + 1 events to one
    /// aggregate and, every fourth commit, one event to the next aggregate as well.
    async fn write(&mut self, pool: &PgPool, aggregates: &[Aggregate], count: usize) {
        for _ in 0..count {
            let n = self.commits as usize;
            let mut touched = vec![(aggregates[n % aggregates.len()].clone(), n % 3 + 1)];
            if n.is_multiple_of(4) && aggregates.len() > 1 {
                touched.push((aggregates[(n + 1) % aggregates.len()].clone(), 1));
            }
            let streams = touched
                .iter()
                .map(|(aggregate, events)| StreamAppend {
                    aggregate_type: aggregate.0.to_owned(),
                    aggregate_id: aggregate.1.clone(),
                    expected_sequence: self.sequences.get(aggregate).copied().unwrap_or(0),
                    expected_last_hash: None,
                    events: (0..*events)
                        .map(|i| NewEvent {
                            event_id: Uuid::new_v4(),
                            event_type: "RelayTested".to_owned(),
                            event_version: 1,
                            payload: json!({"commit": n, "index": i, "amount": {"minor_units": 1500, "currency": "EUR"}}),
                        })
                        .collect(),
                })
                .collect();
            let id = Uuid::new_v4();
            let commit = Commit {
                streams,
                metadata: EventMetadata {
                    actor: "test".to_owned(),
                    command_id: id,
                    correlation_id: id,
                    causation_id: id,
                },
                recorded_at_unix_micros: T0_MICROS + self.commits,
                idempotency: None,
            };
            let events = commit.event_count();
            event_store::commit(pool, commit).await.expect("commit is accepted");
            for (aggregate, count) in touched {
                *self.sequences.entry(aggregate).or_default() += count as i64;
            }
            self.commits += 1;
            self.events += events;
        }
    }
}

struct Running {
    metrics: Arc<RelayMetrics>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), command_svc::relay::RelayError>>,
}

fn spawn_relay(pool: &PgPool, config: RelayConfig) -> Running {
    let relay = Relay::new(pool.clone(), config);
    let metrics = relay.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    Running { metrics, stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("relay task panicked").expect("relay stopped with an error");
    }
}

async fn unpublished(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(pool).await.expect("count")
}

async fn all_published(pool: &PgPool) -> bool {
    unpublished(pool).await == 0
}

async fn stored_events(pool: &PgPool) -> BTreeMap<String, StoredEvent> {
    let events = event_store::read_log(pool, 0, 100_000).await.expect("read log");
    events.into_iter().map(|e| (e.event_id.to_string(), e)).collect()
}

fn distinct_ids(received: &[Received]) -> BTreeSet<String> {
    received.iter().map(|r| r.event_id().to_owned()).collect()
}

/// Each aggregate's sequences in arrival order, counting only the first copy of an event.
fn sequences_in_arrival_order(received: &[Received]) -> BTreeMap<(String, String), Vec<i64>> {
    let mut seen = BTreeSet::new();
    let mut sequences: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for r in received {
        if seen.insert(r.event_id().to_owned()) {
            let aggregate = (r.envelope["aggregatetype"].as_str().expect("type").to_owned(), r.key.clone());
            sequences.entry(aggregate).or_default().push(r.envelope["sequence"].as_i64().expect("sequence"));
        }
    }
    sequences
}

fn expected_sequences(writer: &Writer) -> BTreeMap<(String, String), Vec<i64>> {
    writer.sequences.iter().map(|((t, id), last)| (((*t).to_owned(), id.clone()), (1..=*last).collect())).collect()
}

/// Every field of a received message against the stored event it carries.
fn check_message(config: &RelayConfig, received: &Received, stored: &StoredEvent) {
    let envelope = &received.envelope;
    assert_eq!(received.topic, config.topic(&stored.aggregate_type));
    assert_eq!(received.key, stored.aggregate_id);
    assert_eq!(envelope["specversion"], "1.0");
    assert_eq!(envelope["id"], stored.event_id.to_string());
    assert_eq!(envelope["source"], "dscm");
    assert_eq!(envelope["type"], stored.event_type.as_str());
    assert_eq!(envelope["subject"], stored.aggregate_id.as_str());
    let micros = stored.recorded_at_unix_micros - T0_MICROS;
    assert_eq!(envelope["time"], format!("2026-11-26T00:00:00.{micros:06}Z"));
    assert_eq!(envelope["datacontenttype"], "application/json");
    assert_eq!(envelope["aggregatetype"], stored.aggregate_type.as_str());
    assert_eq!(envelope["sequence"], stored.sequence);
    assert_eq!(envelope["position"], stored.position);
    assert_eq!(envelope["eventversion"], stored.event_version);
    assert_eq!(envelope["hash"], hex::encode(stored.hash));
    assert_eq!(envelope["prevhash"], hex::encode(stored.prev_hash));
    assert_eq!(envelope["actor"], "test");
    assert_eq!(envelope["commandid"], stored.metadata.command_id.to_string());
    assert_eq!(envelope["data"], stored.payload);
    let expected: Value = serde_json::from_slice(&encode_envelope(stored).expect("encode")).expect("json");
    assert_eq!(*envelope, expected);
    assert_eq!(received.headers["content-type"], "application/cloudevents+json; charset=UTF-8");
    assert_eq!(received.headers["dscm-event-id"], stored.event_id.to_string());
    assert_eq!(received.headers["dscm-event-type"], stored.event_type);
    assert_eq!(received.headers["dscm-position"], stored.position.to_string());
}

#[sqlx::test(migrations = false)]
async fn every_committed_event_is_published_once_in_aggregate_order_with_its_envelope(pool: PgPool) {
    command_svc::migrate(&pool).await.expect("migrate");
    let brokers = shared_brokers();
    let config = config(&brokers);
    let aggregates = aggregates();
    let mut writer = Writer::default();
    writer.write(&pool, &aggregates, 15).await;

    let relay = spawn_relay(&pool, config.clone());
    writer.write(&pool, &aggregates, 15).await;
    eventually("the relay publishes the whole outbox", DEADLINE, || all_published(&pool)).await;
    eventually("the relay's lag drops to 0", DEADLINE, || async { relay.metrics.lag() == 0 }).await;
    // No failed round, so every message sent belongs to a round that counted it.
    assert_eq!((relay.metrics.published(), relay.metrics.failures()), (writer.events as u64, 0));
    assert_eq!(relay.metrics.last_error(), None);
    relay.stop().await;

    let received =
        consume_until(&brokers, &topics(&config), DEADLINE, |r| distinct_ids(r).len() == writer.events).await;
    assert_eq!(received.len(), writer.events, "a consumer receives each event once");
    let stored = stored_events(&pool).await;
    assert_eq!(distinct_ids(&received), stored.keys().cloned().collect());
    for r in &received {
        check_message(&config, r, &stored[r.event_id()]);
    }
    assert_eq!(sequences_in_arrival_order(&received), expected_sequences(&writer));
}

#[sqlx::test(migrations = false)]
async fn two_relays_at_once_publish_each_event_once_in_aggregate_order(pool: PgPool) {
    command_svc::migrate(&pool).await.expect("migrate");
    let brokers = shared_brokers();
    // Small batches, so the two relays take many rounds between them while commits go on.
    let config = RelayConfig { batch_size_max: 7, poll_interval_ms: 5, ..config(&brokers) };
    let aggregates = aggregates();
    let first = spawn_relay(&pool, config.clone());
    let second = spawn_relay(&pool, config.clone());
    let mut writer = Writer::default();
    writer.write(&pool, &aggregates, 60).await;

    eventually("the relays publish the whole outbox", DEADLINE, || all_published(&pool)).await;
    let (by_first, by_second) = (first.metrics.published(), second.metrics.published());
    eprintln!("published: {by_first} by the first relay, {by_second} by the second, {} events", writer.events);
    // No failed round, so every message sent belongs to a round that counted it: the relays sent
    // each event exactly once between them.
    assert_eq!(by_first + by_second, writer.events as u64);
    assert_eq!((first.metrics.failures(), second.metrics.failures()), (0, 0));
    first.stop().await;
    second.stop().await;

    let received =
        consume_until(&brokers, &topics(&config), DEADLINE, |r| distinct_ids(r).len() == writer.events).await;
    assert_eq!(received.len(), writer.events, "a consumer receives each event once");
    assert_eq!(sequences_in_arrival_order(&received), expected_sequences(&writer));
}

#[sqlx::test(migrations = false)]
async fn commands_are_accepted_while_the_broker_is_down_and_the_relay_catches_up(pool: PgPool) {
    command_svc::migrate(&pool).await.expect("migrate");
    // A broker of this test's own: stopping the shared one would disturb other tests.
    let broker = PrivateBroker::start().await;
    let config = RelayConfig { message_timeout_ms: 2_000, ..config(&broker.brokers()) };
    let aggregates = aggregates();
    let relay = spawn_relay(&pool, config.clone());
    let mut writer = Writer::default();
    writer.write(&pool, &aggregates, 10).await;
    eventually("the relay publishes the first events", DEADLINE, || all_published(&pool)).await;
    let before_stop = writer.events;
    let first =
        consume_until(&broker.brokers(), &topics(&config), DEADLINE, |r| distinct_ids(r).len() == before_stop).await;

    broker.stop().await;
    writer.write(&pool, &aggregates, 10).await;
    let while_down = writer.events - before_stop;
    assert_eq!(unpublished(&pool).await, while_down as i64, "the outbox keeps what the relay cannot publish");
    eventually("the relay reports the lag and the failure", DEADLINE, || async {
        relay.metrics.lag() == while_down as u64 && relay.metrics.last_error().is_some()
    })
    .await;
    eprintln!("relay error while the broker is down: {:?}", relay.metrics.last_error());

    // Memory storage: the broker comes back empty, without topics; the relay creates them again.
    broker.restart().await;
    let restarted = Instant::now();
    eventually("the relay catches up", DEADLINE, || all_published(&pool)).await;
    eprintln!("caught up {:?} after the broker restarted", restarted.elapsed());
    eventually("the lag drops to 0", DEADLINE, || async { relay.metrics.lag() == 0 }).await;
    assert_eq!(relay.metrics.last_error(), None);
    relay.stop().await;

    let second =
        consume_until(&broker.brokers(), &topics(&config), DEADLINE, |r| distinct_ids(r).len() == while_down).await;
    let all: Vec<Received> = first.into_iter().chain(second).collect();
    let stored = stored_events(&pool).await;
    assert_eq!(distinct_ids(&all), stored.keys().cloned().collect(), "every event reached Kafka");
    for r in &all {
        check_message(&config, r, &stored[r.event_id()]);
    }
    assert_eq!(sequences_in_arrival_order(&all), expected_sequences(&writer));
}
