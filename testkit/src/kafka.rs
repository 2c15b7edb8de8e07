//! The Kafka-protocol broker for tests: the shared tansu broker (`KAFKA_BROKERS`, which
//! infra/test.sh sets, else the one `infra/kafka.sh` runs, started if needed), a private broker
//! a test may stop, restart, freeze and thaw (`DSCM_KAFKA_PORT`/`DSCM_KAFKA_DIR`), and topic
//! creation before a consumer starts (so it finds them at once rather than at its next metadata
//! refresh).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

/// Partitions per topic, as the relay creates them.
pub const PARTITIONS: i32 = 3;

fn script() -> PathBuf {
    crate::repo_root().join("infra/kafka.sh")
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

/// Creates `<prefix><aggregate_type>` for each of `aggregate_types` (as the relay would, with
/// [`PARTITIONS`] partitions), ignoring "already exists".
pub async fn create_topics(brokers: &str, prefix: &str, aggregate_types: &[&str]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let names: Vec<String> = aggregate_types.iter().map(|t| format!("{prefix}{t}")).collect();
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&topics, &options).await.expect("create topics");
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("creating topic {topic}: {code}"),
        }
    }
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
        let dir = std::env::temp_dir().join(crate::unique("dscm-test-kafka"));
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

    /// Freezes the broker process (SIGSTOP, by the PID in its PID file): it keeps its sockets
    /// and its log but answers nothing, as a broker cut off by the network.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join("tansu.pid")).expect("the broker's PID file");
        let pid = pid.trim();
        assert!(!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()), "PID file holds {pid:?}");
        let status = Command::new("kill").arg(signal).arg(pid).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DSCM_KAFKA_PORT", self.port.to_string()),
            ("DSCM_KAFKA_DIR", self.dir.display().to_string()),
            // SIGKILL after 1 s rather than waiting for tansu to drain the clients' connections:
            // a crash is what the test simulates anyway.
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
        // A frozen broker would not stop on SIGTERM before the grace period.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("tansu.pid")) {
            let _ = Command::new("kill").arg("-CONT").arg(pid.trim()).status();
        }
        let env = self.env();
        let _ = Command::new("bash").arg(script()).arg("stop").envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
