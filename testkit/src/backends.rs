//! The two database backends a service runs on, and the one way a test runs on both: the
//! [`on_both_backends`](crate::on_both_backends) attribute, for unit tests and end-to-end tests
//! alike. The test takes a [`Backend`] and makes its databases with [`Databases::for_test`]; the
//! attribute turns it into `<test>::on_sqlite` and `<test>::on_postgres`, so both backends are
//! proved by one body and the test's name says which one failed (`cargo test on_postgres` runs
//! one side).

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::Postgres;

/// Marks an `async fn t(backend: Backend)` test to run once on each backend. Put it above the
/// test's own attribute, which it moves onto the two tests it generates:
///
/// ```text
/// #[ordermesh_testkit::on_both_backends]
/// #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// async fn a_paid_order_is_notified(backend: Backend) -> Result<()> { ... }
/// ```
///
/// runs as `a_paid_order_is_notified::on_sqlite` and `a_paid_order_is_notified::on_postgres`.
pub use ordermesh_testkit_macros::on_both_backends;

/// The database a test's services run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file per service, in the test's temporary directory.
    Sqlite,
    /// A PostgreSQL server of the test's own, a database per service.
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

/// Where one test's services keep their data.
#[derive(Debug)]
pub enum Databases {
    /// A SQLite file per service in this directory.
    Sqlite(PathBuf),
    /// A database per service (`order`, `payment`, `notifier`) on a server of the test's own.
    Postgres(Postgres),
    /// A SQLite file per service in a temporary directory of the test's own, removed with it.
    SqliteTemp(tempfile::TempDir),
}

impl Databases {
    /// On `backend`: SQLite files in `dir`, or a fresh PostgreSQL server with the three databases
    /// created (empty; each service migrates its own). None when the test is to skip: PostgreSQL
    /// is wanted but not installed here, and CI is not set.
    pub async fn for_test(dir: &Path, backend: Backend) -> Result<Option<Self>> {
        match backend {
            Backend::Sqlite => Ok(Some(Self::Sqlite(dir.to_owned()))),
            Backend::Postgres => {
                let Some(server) = Postgres::start().await? else {
                    return Ok(None);
                };
                for name in ["order", "payment", "notifier"] {
                    server.create_database(name).await?;
                }
                Ok(Some(Self::Postgres(server)))
            }
        }
    }

    /// The database URL of service `name`.
    pub fn url(&self, name: &str) -> String {
        match self {
            Databases::Sqlite(dir) => format!("sqlite://{}/{name}.db", dir.display()),
            Databases::SqliteTemp(dir) => format!("sqlite://{}/{name}.db", dir.path().display()),
            Databases::Postgres(server) => server.url(name),
        }
    }
}

/// The database of a unit test of `service`'s store on `backend`: its URL (a SQLite file in a
/// temporary directory, as the services keep theirs, so the stores run on their SQLite writer
/// thread; or a database on a PostgreSQL server of the test's own) and what keeps it, to be held
/// for as long as the test uses it. None when the test is to skip (see [`Databases::for_test`]).
/// Panics where a test would: it has nothing else to do then.
pub async fn unit_database(backend: Backend, service: &str) -> Option<(String, Option<Databases>)> {
    match backend {
        Backend::Sqlite => {
            let databases =
                Databases::SqliteTemp(tempfile::tempdir().expect("a temporary directory"));
            Some((databases.url(service), Some(databases)))
        }
        Backend::Postgres => {
            let databases = Databases::for_test(Path::new("."), backend)
                .await
                .expect("a PostgreSQL server")?;
            Some((databases.url(service), Some(databases)))
        }
    }
}
