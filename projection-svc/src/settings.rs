//! Typed settings from the environment: defaults, then variables.
//!
//! `DSCM_DATABASE_URL` (or `DATABASE_URL`), `DSCM_DATABASE_MAX_CONNECTIONS` (16),
//! `DSCM_KAFKA_BROKERS` (unset: serve the API without a consumer), `DSCM_TOPIC_PREFIX` (`dscm.`:
//! topics `dscm.<aggregate_type>`; the same variable and meaning as command-svc's relay), `DSCM_CONSUMER_GROUP` (`dscm-projection`),
//! `DSCM_READ_HTTP_ADDR` (127.0.0.1:8081), `DSCM_MIN_POSITION_WAIT_MS` (2000),
//! `DSCM_CONSUMER_BATCH_SIZE_MAX` (500), `DSCM_CONSUMER_BATCH_WAIT_MS` (50),
//! `DSCM_REPLAY_PAGE_SIZE` (1000), `DSCM_REPLAY_DROP_GRACE_MS` (5000), `DSCM_REPAIR_GRACE_MS`
//! (3000: how long the watermark may stall behind the event store before the store fills in).

use std::net::SocketAddr;
use std::str::FromStr;

pub use command_svc::settings::Secret;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Secret,
    pub database_max_connections: u32,
    pub kafka: Option<KafkaSettings>,
    pub http_addr: SocketAddr,
    /// How long a read with `min_position` waits for the projection to catch up.
    pub min_position_wait_ms: u64,
    pub replay: ReplaySettings,
    /// When the watermark stalls behind the event store, fill in from the store.
    pub repair: crate::repair::RepairSettings,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topics are `<topic_prefix><aggregate_type>`, as the relay names them
    /// (`command_svc::settings::KafkaSettings`).
    pub topic_prefix: String,
    pub group_id: String,
    /// Messages per batch (one PostgreSQL transaction), 1..=10 000.
    pub batch_size_max: usize,
    /// How long a batch waits to fill after its first message.
    pub batch_wait_ms: u64,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.into(),
            topic_prefix: command_svc::settings::default_topic_prefix(),
            group_id: "dscm-projection".to_owned(),
            batch_size_max: 500,
            batch_wait_ms: 50,
        }
    }

    pub fn topic(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}", self.topic_prefix)
    }

    /// One topic per aggregate type of the domain.
    pub fn topics(&self) -> Vec<String> {
        command_svc::relay::AGGREGATE_TYPES.iter().map(|t| self.topic(t)).collect()
    }
}

#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Events read from the store and applied per transaction.
    pub page_size: i64,
    /// How long the old schema stays after the switch, for reads that started on it.
    pub drop_grace_ms: u64,
    /// Print the progress bar to stderr.
    pub progress: bool,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        ReplaySettings { page_size: 1_000, drop_grace_ms: 5_000, progress: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("no database URL: set DSCM_DATABASE_URL (or DATABASE_URL)")]
    NoDatabase,
    #[error("invalid value for {name}: {message}")]
    Env { name: &'static str, message: String },
}

fn parsed<T: FromStr>(env: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<Option<T>, SettingsError>
where
    T::Err: std::fmt::Display,
{
    env(name)
        .map(|v| v.trim().parse::<T>().map_err(|e| SettingsError::Env { name, message: format!("{v:?}: {e}") }))
        .transpose()
}

impl Settings {
    pub fn load() -> Result<Settings, SettingsError> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let url = env("DSCM_DATABASE_URL").or_else(|| env("DATABASE_URL")).ok_or(SettingsError::NoDatabase)?;
        let kafka = match env("DSCM_KAFKA_BROKERS").filter(|b| !b.trim().is_empty()) {
            None => None,
            Some(brokers) => {
                let mut k = KafkaSettings::new(brokers.trim());
                if let Some(prefix) = env("DSCM_TOPIC_PREFIX") {
                    k.topic_prefix = prefix;
                }
                if let Some(group) = env("DSCM_CONSUMER_GROUP") {
                    k.group_id = group;
                }
                if let Some(n) = parsed::<usize>(&env, "DSCM_CONSUMER_BATCH_SIZE_MAX")? {
                    if !(1..=10_000).contains(&n) {
                        return Err(SettingsError::Env {
                            name: "DSCM_CONSUMER_BATCH_SIZE_MAX",
                            message: format!("{n} is not in 1..=10000"),
                        });
                    }
                    k.batch_size_max = n;
                }
                if let Some(ms) = parsed(&env, "DSCM_CONSUMER_BATCH_WAIT_MS")? {
                    k.batch_wait_ms = ms;
                }
                Some(k)
            }
        };
        let mut replay = ReplaySettings::default();
        if let Some(n) = parsed::<i64>(&env, "DSCM_REPLAY_PAGE_SIZE")? {
            if !(1..=100_000).contains(&n) {
                return Err(SettingsError::Env {
                    name: "DSCM_REPLAY_PAGE_SIZE",
                    message: format!("{n} is not in 1..=100000"),
                });
            }
            replay.page_size = n;
        }
        if let Some(ms) = parsed(&env, "DSCM_REPLAY_DROP_GRACE_MS")? {
            replay.drop_grace_ms = ms;
        }
        let mut repair = crate::repair::RepairSettings::default();
        if let Some(ms) = parsed::<u64>(&env, "DSCM_REPAIR_GRACE_MS")? {
            repair.grace = std::time::Duration::from_millis(ms);
        }
        Ok(Settings {
            database_url: Secret::new(url),
            database_max_connections: parsed(&env, "DSCM_DATABASE_MAX_CONNECTIONS")?.unwrap_or(16),
            kafka,
            http_addr: parsed(&env, "DSCM_READ_HTTP_ADDR")?.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8081))),
            min_position_wait_ms: parsed(&env, "DSCM_MIN_POSITION_WAIT_MS")?.unwrap_or(2_000),
            replay,
            repair,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s = Settings::load_from(|name| match name {
            "DATABASE_URL" => Some("postgres://u:hunter2@h/db".into()),
            "DSCM_KAFKA_BROKERS" => Some("127.0.0.1:59092".into()),
            "DSCM_MIN_POSITION_WAIT_MS" => Some("150".into()),
            _ => None,
        })
        .expect("loads");
        assert_eq!(s.http_addr.port(), 8081);
        assert_eq!(s.min_position_wait_ms, 150);
        let kafka = s.kafka.as_ref().expect("kafka");
        assert_eq!(kafka.topic("job"), "dscm.job");
        assert_eq!(kafka.topics().len(), 7);
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = Settings::load_from(|name| match name {
            "DATABASE_URL" => Some("postgres://x".into()),
            "DSCM_READ_HTTP_ADDR" => Some("nowhere".into()),
            _ => None,
        })
        .expect_err("bad address");
        assert!(err.to_string().contains("DSCM_READ_HTTP_ADDR"), "{err}");
        assert!(matches!(Settings::load_from(|_| None), Err(SettingsError::NoDatabase)));
    }
}
