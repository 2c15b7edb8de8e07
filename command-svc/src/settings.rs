//! Typed settings: defaults, then a TOML file (`DSCM_CONFIG`), then environment variables.
//!
//! Environment variables: `DSCM_HTTP_ADDR`, `DSCM_DATABASE_URL` (or `DATABASE_URL`),
//! `DSCM_DATABASE_MAX_CONNECTIONS`, `DSCM_COMMAND_RETRIES_MAX`, `DSCM_SCHEDULER` (on/off),
//! `DSCM_SCHEDULER_TICK_MS`, `DSCM_AUTO_PAYOUT` (on/off), `DSCM_KAFKA_BROKERS` (runs the outbox
//! relay), `DSCM_TOPIC_PREFIX` (default `dscm.`).

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// A secret: never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    #[serde(default)]
    pub commands: CommandSettings,
    #[serde(default)]
    pub scheduler: SchedulerToggle,
    /// Where the outbox relay publishes; no relay runs without it.
    #[serde(default)]
    pub kafka: Option<KafkaSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, e.g. `127.0.0.1:59092`.
    pub brokers: String,
    /// Topics are `<topic_prefix><aggregate_type>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
}

pub fn default_topic_prefix() -> String {
    "dscm.".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerToggle {
    /// Run the deadline scheduler and the payout process manager in this process.
    pub enabled: bool,
    pub tick_ms: u64,
    /// Turn released earnings into payout requests.
    pub auto_payout: bool,
}

impl Default for SchedulerToggle {
    fn default() -> Self {
        SchedulerToggle { enabled: true, tick_ms: 500, auto_payout: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { addr: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A `postgres://` URL, with its password.
    pub url: Secret,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    16
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    /// Optimistic-concurrency conflicts are retried this many times, then answered with 409.
    pub retries_max: u32,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings { retries_max: 8 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the settings file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid settings file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value for {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("no database URL: set DSCM_DATABASE_URL (or DATABASE_URL), or [database] url in the settings file")]
    NoDatabase,
}

impl Settings {
    /// Load from `DSCM_CONFIG` (if set) and the environment.
    pub fn load() -> Result<Settings, SettingsError> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    /// Load with an explicit environment (tests).
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct FileSettings {
            http: Option<HttpSettings>,
            database: Option<DatabaseSettings>,
            commands: Option<CommandSettings>,
            scheduler: Option<SchedulerToggle>,
            kafka: Option<KafkaSettings>,
        }
        let file: FileSettings = match env("DSCM_CONFIG") {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| SettingsError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|e| SettingsError::Parse { path, message: e.to_string() })?
            }
            None => FileSettings::default(),
        };
        let mut http = file.http.unwrap_or_default();
        let mut commands = file.commands.unwrap_or_default();
        let mut scheduler = file.scheduler.unwrap_or_default();
        let mut kafka = file.kafka;
        if let Some(brokers) = env("DSCM_KAFKA_BROKERS") {
            let topic_prefix = kafka.as_ref().map_or_else(default_topic_prefix, |k| k.topic_prefix.clone());
            kafka = Some(KafkaSettings { brokers, topic_prefix });
        }
        if let (Some(k), Some(prefix)) = (kafka.as_mut(), env("DSCM_TOPIC_PREFIX")) {
            k.topic_prefix = prefix;
        }
        let mut database = file.database;
        if let Some(addr) = env("DSCM_HTTP_ADDR") {
            http.addr =
                addr.parse().map_err(|e| SettingsError::Env { name: "DSCM_HTTP_ADDR", message: format!("{e}") })?;
        }
        if let Some(url) = env("DSCM_DATABASE_URL").or_else(|| env("DATABASE_URL")) {
            let max_connections = database.as_ref().map_or(default_max_connections(), |d| d.max_connections);
            database = Some(DatabaseSettings { url: Secret::new(url), max_connections });
        }
        let mut database = database.ok_or(SettingsError::NoDatabase)?;
        if let Some(n) = env("DSCM_DATABASE_MAX_CONNECTIONS") {
            database.max_connections = n
                .parse()
                .map_err(|e| SettingsError::Env { name: "DSCM_DATABASE_MAX_CONNECTIONS", message: format!("{e}") })?;
        }
        if let Some(n) = env("DSCM_COMMAND_RETRIES_MAX") {
            commands.retries_max = n
                .parse()
                .map_err(|e| SettingsError::Env { name: "DSCM_COMMAND_RETRIES_MAX", message: format!("{e}") })?;
        }
        let flag = |name: &'static str, value: String| match value.as_str() {
            "1" | "true" | "on" => Ok(true),
            "0" | "false" | "off" => Ok(false),
            other => Err(SettingsError::Env { name, message: format!("expected on/off, got {other:?}") }),
        };
        if let Some(v) = env("DSCM_SCHEDULER") {
            scheduler.enabled = flag("DSCM_SCHEDULER", v)?;
        }
        if let Some(v) = env("DSCM_AUTO_PAYOUT") {
            scheduler.auto_payout = flag("DSCM_AUTO_PAYOUT", v)?;
        }
        if let Some(v) = env("DSCM_SCHEDULER_TICK_MS") {
            scheduler.tick_ms = v
                .parse()
                .map_err(|e| SettingsError::Env { name: "DSCM_SCHEDULER_TICK_MS", message: format!("{e}") })?;
        }
        Ok(Settings { http, database, commands, scheduler, kafka })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_defaults_and_secrets_do_not_print() {
        let s = Settings::load_from(|name| match name {
            "DATABASE_URL" => Some("postgres://u:hunter2@h/db".into()),
            "DSCM_HTTP_ADDR" => Some("0.0.0.0:9000".into()),
            _ => None,
        })
        .expect("loads");
        assert_eq!(s.http.addr.port(), 9000);
        assert_eq!(s.commands.retries_max, 8);
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_missing_database_url_is_a_clear_error() {
        let err = Settings::load_from(|_| None).expect_err("no database");
        assert!(matches!(err, SettingsError::NoDatabase));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = Settings::load_from(|name| match name {
            "DATABASE_URL" => Some("postgres://x".into()),
            "DSCM_HTTP_ADDR" => Some("not an address".into()),
            _ => None,
        })
        .expect_err("bad addr");
        assert!(err.to_string().contains("DSCM_HTTP_ADDR"));
    }
}
