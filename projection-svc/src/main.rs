//! `projection-svc serve | replay`.

use anyhow::Context as _;
use projection_svc::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let settings = Settings::load().context("loading settings")?;
    let pool = projection_svc::connect(&settings).await.context("connecting to PostgreSQL")?;
    command_svc::migrate(&pool).await.context("migrating the event store and write model")?;
    match std::env::args().nth(1).as_deref() {
        Some("serve") | None => {
            projection_svc::schema::ensure(&pool).await.context("preparing the read models")?;
            projection_svc::schema::active(&pool).await.context("checking the read models")?;
            let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "projection-svc listening");
            let shutdown = async { tokio::signal::ctrl_c().await.unwrap_or(()) };
            projection_svc::serve(listener, pool, &settings, shutdown).await?;
        }
        Some("replay") => {
            let report = projection_svc::replay::replay(&pool, &settings.replay).await?;
            println!(
                "{} events into {} (was {}) in {:.1} s, {:.0} events/s; old schema dropped: {}",
                report.events,
                report.schema,
                report.previous,
                report.elapsed.as_secs_f64(),
                report.events_per_sec,
                report.dropped_previous
            );
        }
        Some(other) => anyhow::bail!("unknown command {other:?}: expected serve or replay"),
    }
    Ok(())
}
