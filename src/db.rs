//! Opening a service's database. Each service keeps its SQL in one module of its own and its schema
//! in its own `migrations/`; this is only the part they share: turning a URL into a ready pool.
//!
//! SQLite is the embedded default: one file per service under the data directory, so a restart loses
//! nothing. `sqlite::memory:` keeps everything in memory, for throwaway runs.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Why a service's database could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate database {url}: {source}")]
    Migrate { url: String, source: MigrateError },
}

/// Opens the database at `url` and brings its schema up to date with `migrations` (each service's
/// `sqlx::migrate!()`), before anything is served from it.
pub async fn open(url: &str, migrations: &Migrator) -> Result<SqlitePool, DbError> {
    let pool = connect(url).await.map_err(|source| DbError::Open {
        url: url.to_owned(),
        source,
    })?;
    migrations
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate {
            url: url.to_owned(),
            source,
        })?;
    Ok(pool)
}

/// Opens (creating if missing) the SQLite database at `url`, e.g. `sqlite://data/order.db` or
/// `sqlite::memory:`.
pub async fn connect(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        // WAL lets readers (GetOrder, ListOrders) run while a writer commits.
        .journal_mode(SqliteJournalMode::Wal)
        // In WAL mode NORMAL is still durable against process crashes; only an OS crash can lose the
        // last transactions. FULL would add an fsync per commit.
        .synchronous(SqliteSynchronous::Normal)
        // Writers queue for the lock instead of failing at once with SQLITE_BUSY.
        .busy_timeout(Duration::from_secs(5));
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !in_memory {
        let file = options.get_filename();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir)?;
        }
    }
    SqlitePoolOptions::new()
        // Every connection to `:memory:` would be a separate empty database: keep exactly one, forever.
        .max_connections(if in_memory { 1 } else { 8 })
        .min_connections(if in_memory { 1 } else { 0 })
        .idle_timeout(if in_memory {
            None
        } else {
            Some(Duration::from_secs(600))
        })
        .max_lifetime(if in_memory {
            None
        } else {
            Some(Duration::from_secs(3600))
        })
        .connect_with(options)
        .await
}

fn create_dir(dir: &Path) -> Result<(), sqlx::Error> {
    std::fs::create_dir_all(dir).map_err(|e| {
        sqlx::Error::Configuration(
            format!("cannot create data directory {}: {e}", dir.display()).into(),
        )
    })
}
