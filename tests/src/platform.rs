//! The platform in process: command-svc and projection-svc started with their own `serve`
//! functions on `127.0.0.1:0`, each with its own connection pool to the same fresh database,
//! the relay publishing to a real broker under a unique topic prefix and the consumer reading it
//! in a unique group. Only their HTTP APIs are used to drive them; the database is read only to
//! compare (see [`crate::truth`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use command_svc::clock::{Clock, ManualClock, SystemClock};
use domain::{Role, Timestamp};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{Api, Reply};
use crate::db::TestDb;
use crate::eventually;
use crate::kafka::{create_topics, unique};

/// 2026-11-26T00:00:00Z: where a manual clock starts.
pub const T0: Timestamp = Timestamp(1_795_651_200_000);

/// How a platform is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// `bootstrap.servers` of the broker the relay publishes to and the consumer reads.
    pub brokers: String,
    /// Unique per platform: topics are `<topic_prefix><aggregate_type>`.
    pub topic_prefix: String,
    /// Unique per platform.
    pub group_id: String,
    /// `Some(start)`: a [`ManualClock`] the test moves; `None`: the system clock.
    pub manual_clock: Option<Timestamp>,
    pub scheduler_tick_ms: u64,
    pub auto_payout: bool,
    /// How long a read with `min_position` waits before answering 503.
    pub min_position_wait_ms: u64,
    /// The consumer's batch: how long it waits to fill after the first message.
    pub consumer_batch_wait_ms: u64,
    /// Per service.
    pub max_connections: u32,
    /// Create the topics before the services start (the relay also creates them, idempotently).
    pub create_topics: bool,
}

impl Options {
    /// The test defaults: a manual clock at [`T0`], the scheduler every 20 ms with auto-payout
    /// (as `command-svc serve` runs it), a 3 s `min_position` wait, unique topics and group.
    pub fn new(brokers: impl Into<String>) -> Options {
        let tag = unique("e2e");
        Options {
            brokers: brokers.into(),
            topic_prefix: format!("{tag}."),
            group_id: format!("{tag}-projection"),
            manual_clock: Some(T0),
            scheduler_tick_ms: 20,
            auto_payout: true,
            min_position_wait_ms: 3_000,
            consumer_batch_wait_ms: projection_svc::settings::KafkaSettings::new("").batch_wait_ms,
            max_connections: 16,
            create_topics: true,
        }
    }
}

/// Both services running against one database.
#[derive(Debug)]
pub struct Platform {
    /// The test's own pool (not the services'), to compare with the truth.
    pub pool: PgPool,
    /// The manual clock, when [`Options::manual_clock`] was set.
    pub clock: Option<Arc<ManualClock>>,
    /// command-svc: the write API.
    pub writes: Api,
    /// projection-svc: the read API.
    pub reads: Api,
    /// The first admin key, issued with `command_svc::auth::issue_key` (as `bootstrap-admin` does).
    pub admin_key: String,
    pub options: Options,
    stop: watch::Sender<bool>,
    command_svc: Option<JoinHandle<io::Result<()>>>,
    projection_svc: Option<JoinHandle<io::Result<()>>>,
    // Dropped last: the database goes after everything that uses it.
    pub db: TestDb,
}

impl Platform {
    /// Creates a database and starts both services on it.
    pub async fn start(options: Options) -> Platform {
        let db = TestDb::create("e2e").await;
        Self::start_on(db, options).await
    }

    /// Starts both services on `db` (migrated here: the event store, the write model and the
    /// read-model schema, as `command-svc migrate` and `projection-svc serve` do).
    pub async fn start_on(db: TestDb, options: Options) -> Platform {
        let pool =
            PgPoolOptions::new().max_connections(8).connect(&db.url).await.expect("connect to the test database");
        command_svc::migrate(&pool).await.expect("migrate");
        projection_svc::schema::ensure(&pool).await.expect("read-model schema");
        if options.create_topics {
            create_topics(&options.brokers, &options.topic_prefix).await;
        }
        let admin = command_svc::auth::issue_key(&pool, None, Role::Admin, "e2e bootstrap admin").await.expect("admin");
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        // command-svc: the write API, the scheduler and the outbox relay.
        let manual = options.manual_clock.map(|t| Arc::new(ManualClock::new(t)));
        let clock: Arc<dyn Clock> = match &manual {
            Some(m) => m.clone(),
            None => Arc::new(SystemClock),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind command-svc");
        let write_addr = listener.local_addr().expect("addr");
        let settings = command_svc::settings::Settings {
            http: command_svc::settings::HttpSettings { addr: write_addr },
            database: command_svc::settings::DatabaseSettings {
                url: command_svc::settings::Secret::new(db.url.clone()),
                max_connections: options.max_connections,
            },
            commands: command_svc::settings::CommandSettings::default(),
            scheduler: command_svc::settings::SchedulerToggle {
                enabled: true,
                tick_ms: options.scheduler_tick_ms,
                auto_payout: options.auto_payout,
            },
            kafka: Some(command_svc::settings::KafkaSettings {
                brokers: options.brokers.clone(),
                topic_prefix: options.topic_prefix.clone(),
            }),
        };
        let write_pool = command_svc::connect(&settings).await.expect("command-svc pool");
        let state = command_svc::state(write_pool, clock, &settings);
        let shutdown = until_stopped(stopped.clone());
        let command = tokio::spawn(async move { command_svc::serve(listener, state, &settings, shutdown).await });

        // projection-svc: the consumer and the read API.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind projection-svc");
        let read_addr = listener.local_addr().expect("addr");
        let mut kafka = projection_svc::settings::KafkaSettings::new(options.brokers.clone());
        kafka.topic_prefix = options.topic_prefix.clone();
        kafka.group_id = options.group_id.clone();
        kafka.batch_wait_ms = options.consumer_batch_wait_ms;
        let settings = projection_svc::settings::Settings {
            database_url: command_svc::settings::Secret::new(db.url.clone()),
            database_max_connections: options.max_connections,
            kafka: Some(kafka),
            http_addr: read_addr,
            min_position_wait_ms: options.min_position_wait_ms,
            replay: projection_svc::settings::ReplaySettings::default(),
            repair: projection_svc::repair::RepairSettings::default(),
        };
        let read_pool = projection_svc::connect(&settings).await.expect("projection-svc pool");
        let shutdown = until_stopped(stopped);
        let projection =
            tokio::spawn(async move { projection_svc::serve(listener, read_pool, &settings, shutdown).await });

        let platform = Platform {
            pool,
            clock: manual,
            writes: Api::new(format!("http://{write_addr}")),
            reads: Api::new(format!("http://{read_addr}")),
            admin_key: admin.key,
            options,
            stop,
            command_svc: Some(command),
            projection_svc: Some(projection),
            db,
        };
        for api in [&platform.writes, &platform.reads] {
            eventually("the service to answer /readyz", Duration::from_secs(30), || async {
                (api.get(None, "/readyz").await.status.is_success()).then_some(())
            })
            .await;
        }
        platform
    }

    /// The manual clock; panics if the platform runs on the system clock.
    pub fn manual_clock(&self) -> &ManualClock {
        self.clock.as_deref().expect("a platform with a manual clock")
    }

    /// The event store's head position.
    pub async fn head(&self) -> i64 {
        event_store::head_position(&self.pool).await.expect("head")
    }

    /// The read API's watermark, as a cheap authenticated read reports it.
    pub async fn read_position(&self) -> i64 {
        let r = self.reads.read(&self.admin_key, "/v1/balances?limit=1").await;
        r.projection_position().expect("X-Projection-Position")
    }

    /// A counter or gauge of command-svc's `/metrics` (0 when absent).
    pub async fn write_metric(&self, name: &str) -> f64 {
        let text = self.writes.get(None, "/metrics").await.body;
        let text = text.as_str().unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits until the platform has nothing left to do: every log follower of the scheduler at
    /// the head, no deadline overdue, the outbox published, the read models at the head, and
    /// the head unchanged across two looks. Returns the head.
    pub async fn quiesce(&self, deadline: Duration) -> i64 {
        let started = std::time::Instant::now();
        let mut previous = None;
        loop {
            let now = self.clock.as_ref().map_or_else(|| SystemClock.now().0, |c| c.now().0);
            let lag = command_svc::scheduler::lag(&self.pool, now).await.expect("scheduler lag");
            let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await
                .expect("outbox");
            let read = self.read_position().await;
            let idle = lag.followers.iter().all(|(_, p)| *p == lag.head)
                && lag.deadlines_overdue == 0
                && unpublished == 0
                && read == lag.head;
            if idle && previous == Some(lag.head) {
                return lag.head;
            }
            previous = idle.then_some(lag.head);
            assert!(
                started.elapsed() < deadline,
                "the platform did not quiesce within {deadline:?}: {lag:?}, {unpublished} unpublished, read models at {read}"
            );
            tokio::time::sleep(crate::POLL_EVERY.max(Duration::from_millis(50))).await;
        }
    }

    /// Stops both services (the HTTP servers drain, the scheduler, relay and consumer stop) and
    /// checks that each ended cleanly.
    pub async fn shutdown(mut self) -> TestDb {
        let _ = self.stop.send(true);
        for (name, handle) in [("command-svc", self.command_svc.take()), ("projection-svc", self.projection_svc.take())]
        {
            let Some(handle) = handle else { continue };
            let ended = tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .unwrap_or_else(|_| panic!("{name} did not stop within 30 s"));
            ended.unwrap_or_else(|e| panic!("{name} task: {e}")).unwrap_or_else(|e| panic!("{name} failed: {e}"));
        }
        self.pool.close().await;
        let Platform { db, .. } = self;
        db
    }
}

/// Helpers on answers of the read API.
pub fn status_of(job: &Reply) -> &str {
    job.body["status"].as_str().unwrap_or("")
}
