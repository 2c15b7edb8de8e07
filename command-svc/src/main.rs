//! `command-svc serve | migrate | bootstrap-admin`.

use std::sync::Arc;

use anyhow::Context as _;
use command_svc::{auth, clock::SystemClock, settings::Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let settings = Settings::load().context("loading settings")?;
    let pool = command_svc::connect(&settings).await.context("connecting to PostgreSQL")?;
    command_svc::migrate(&pool).await.context("migrating the schema")?;
    match std::env::args().nth(1).as_deref() {
        Some("migrate") => println!("schema up to date"),
        Some("bootstrap-admin") => {
            anyhow::ensure!(
                !auth::admin_exists(&pool).await?,
                "an admin key exists already; issue keys through the API"
            );
            let key = auth::issue_key(&pool, None, domain::Role::Admin, "bootstrap").await?;
            println!("{}", key.key);
        }
        Some("serve") | None => {
            let listener = tokio::net::TcpListener::bind(settings.http.addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "command-svc listening");
            let state = command_svc::state(pool, Arc::new(SystemClock), &settings);
            command_svc::serve(listener, state, &settings, async { tokio::signal::ctrl_c().await.unwrap_or(()) })
                .await?;
        }
        Some(other) => anyhow::bail!("unknown command {other:?}: expected serve, migrate or bootstrap-admin"),
    }
    Ok(())
}
