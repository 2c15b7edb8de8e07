//! A fresh PostgreSQL database per test (or benchmark run): created with a unique name on the
//! server of `DATABASE_URL` (else the cluster of `infra/pg.sh`, started if needed), migrated by
//! the services themselves, and dropped (`WITH (FORCE)`) when the [`TestDb`] is dropped — also
//! when a test panics. The role needs `CREATEDB` (the `infra/pg.sh` role has it).

use std::process::Command;
use std::sync::OnceLock;

use sqlx::{Connection, PgConnection};

use crate::kafka::unique;

/// The server's URL: `DATABASE_URL`, else `infra/pg.sh start` and its URL.
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            let script = crate::repo_root().join("infra/pg.sh");
            let start = Command::new("bash").arg(&script).arg("start").output().expect("run infra/pg.sh start");
            assert!(start.status.success(), "infra/pg.sh start: {}", String::from_utf8_lossy(&start.stderr));
            let url = Command::new("bash").arg(&script).arg("url").output().expect("run infra/pg.sh url");
            String::from_utf8_lossy(&url.stdout).trim().to_owned()
        }
    })
    .clone()
}

/// `postgres://…/<old>` → `postgres://…/<database>` (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (without_query, query) = url.split_once('?').map_or((url, None), |(u, q)| (u, Some(q)));
    let (base, _) = without_query.rsplit_once('/').expect("DATABASE_URL has a database name");
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Databases of this harness older than this are leftovers of a killed run (a cancelled test
/// process runs no destructor); the first database a process creates sweeps them.
const LEFTOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

/// Drops `dscm_<what>_<pid>_<unix nanos>_<n>` databases created more than [`LEFTOVER_AFTER`]
/// ago, once per process.
async fn sweep_leftovers(admin: &mut PgConnection) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname ~ '^dscm_[a-z0-9]+_[0-9]+_[0-9]+_[0-9]+$'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for name in names {
        let created = name.rsplit('_').nth(1).and_then(|n| n.parse::<u128>().ok()).unwrap_or(now);
        if now.saturating_sub(created) > LEFTOVER_AFTER.as_nanos() {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut *admin).await;
        }
    }
}

/// A database of one's own; dropped with it.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    server: String,
}

impl TestDb {
    /// Creates `dscm_<what>_<unique>`, empty.
    pub async fn create(what: &str) -> TestDb {
        let server = server_url();
        let name = unique(&format!("dscm_{what}")).replace('-', "_");
        assert!(name.len() < 63, "database name too long: {name}");
        let mut admin = PgConnection::connect(&server).await.expect("connect to DATABASE_URL");
        sweep_leftovers(&mut admin).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE (the role needs CREATEDB)");
        let _ = admin.close().await;
        TestDb { url: with_database(&server, &name), name, server }
    }
}

impl Drop for TestDb {
    /// Drops the database on a thread of its own (this may run inside a runtime, or after a
    /// panic); `WITH (FORCE)` ends any connection still open. `DSCM_E2E_KEEP_DB=1` keeps it
    /// (to look at after a failure).
    fn drop(&mut self) {
        if std::env::var("DSCM_E2E_KEEP_DB").is_ok_and(|v| v == "1") {
            eprintln!("kept test database {} ({})", self.name, self.url);
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut admin = PgConnection::connect(&server).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(with_database("postgres://u:p@h:1/dscm", "x"), "postgres://u:p@h:1/x");
        assert_eq!(with_database("postgres://u:p@h/dscm?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
    }
}
