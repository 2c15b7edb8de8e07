//! Kafka for the relay tests: the shared tansu broker (`KAFKA_BROKERS`, else the one
//! `infra/kafka.sh` runs), a private broker that a test may stop and restart, unique names, a
//! consumer with a fresh group and manual commits, and polling with a deadline.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;

/// How long a consumer that has what it waited for keeps listening for more (duplicates).
pub const QUIET: Duration = Duration::from_secs(1);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/kafka.sh")
}

/// Runs `infra/kafka.sh <command>` with these variables; panics with its stderr on failure.
fn kafka_sh(command: &str, env: &[(&str, String)]) -> String {
    let output = Command::new("bash")
        .arg(script())
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run infra/kafka.sh");
    assert!(
        output.status.success(),
        "infra/kafka.sh {command} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The shared broker: `KAFKA_BROKERS` if set (infra/test.sh sets it), else the default broker of
/// `infra/kafka.sh`, started if needed (and left running, like `infra/pg.sh`'s cluster).
pub fn shared_brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.trim().is_empty() => brokers,
            _ => {
                kafka_sh("start", &[]);
                kafka_sh("url", &[])
            }
        })
        .clone()
}

/// A name no other test (in this or another process, now or in an earlier run) uses.
pub fn unique(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{what}-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A broker of this test's own, on a free port with its own PID file, memory storage: stopping
/// and restarting it disturbs no other test, and it restarts empty. Stopped on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    port: u16,
    dir: PathBuf,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let dir = std::env::temp_dir().join(unique("dscm-kafka"));
        let broker = PrivateBroker { port, dir };
        broker.run("start").await;
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn stop(&self) {
        self.run("stop").await;
    }

    /// Starts it again, empty (memory storage).
    pub async fn restart(&self) {
        self.run("start").await;
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DSCM_KAFKA_PORT", self.port.to_string()),
            ("DSCM_KAFKA_DIR", self.dir.display().to_string()),
            // SIGKILL after 1 s, rather than waiting for tansu to drain the relay's connections
            // (about 5 s): a crash is what the test simulates anyway.
            ("DSCM_KAFKA_STOP_GRACE_S", "1".to_owned()),
        ]
    }

    async fn run(&self, command: &'static str) {
        let env = self.env();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
            kafka_sh(command, &env)
        })
        .await
        .expect("infra/kafka.sh task");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let env = self.env();
        let _ = Command::new("bash").arg(script()).arg("stop").envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

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
