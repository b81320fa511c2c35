//! `#[on_both_backends]` makes a test twice, each given the backend its name says, and
//! `Databases::for_test` gives each backend's databases: the mechanism every test that stores
//! something relies on to cover PostgreSQL as well as SQLite.

use anyhow::{Context, Result, ensure};
use ordermesh_testkit::{Backend, Databases, on_both_backends};

/// The test's own name, as the harness runs it: `<test>::on_sqlite` or `<test>::on_postgres`.
fn running_test() -> Result<String> {
    std::thread::current()
        .name()
        .map(str::to_owned)
        .context("the harness names each test's thread after the test")
}

#[on_both_backends]
#[tokio::test]
async fn each_generated_test_gets_the_backend_its_name_says(backend: Backend) -> Result<()> {
    let name = running_test()?;
    let expected = match backend {
        Backend::Sqlite => "::on_sqlite",
        Backend::Postgres => "::on_postgres",
    };
    ensure!(name.ends_with(expected), "{name} was given {backend}");

    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(()); // PostgreSQL not installed and CI not set.
    };
    let url = databases.url("order");
    match backend {
        Backend::Sqlite => ensure!(url.starts_with("sqlite://"), "{url}"),
        Backend::Postgres => ensure!(url.starts_with("postgres://"), "{url}"),
    }
    Ok(())
}

/// Without tokio: a plain `#[test]` works the same way.
#[on_both_backends]
#[test]
fn a_synchronous_test_runs_on_both_too(backend: Backend) -> Result<()> {
    let name = running_test()?;
    ensure!(
        name.ends_with(&format!("::on_{}", format!("{backend:?}").to_lowercase())),
        "{name} was given {backend}"
    );
    Ok(())
}
