//! The one way a unit test runs on both database backends: a macro that turns `async fn t(postgres:
//! bool)` into two `#[tokio::test]`s, so SQLite and PostgreSQL are proved by the same body and a
//! name in the test output says which one failed.
//!
//! `#[macro_export]` puts the macro at the crate root (`ordermesh_testkit::on_both_backends!`)
//! wherever it is defined. The test bodies make their own databases with
//! [`Databases::for_test`](crate::Databases::for_test).

/// Runs each named test twice: `$test(false)` on SQLite and `$test(true)` on PostgreSQL, as
/// `<test>::on_sqlite` and `<test>::on_postgres`. For unit tests of the statements that replicas
/// sharing a database rely on; each test makes its own database
/// ([`Databases::for_test`](crate::Databases::for_test) skips the PostgreSQL one where PostgreSQL
/// is not installed and CI is not set).
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn on_sqlite() {
                super::$test(false).await
            }
            #[tokio::test]
            async fn on_postgres() {
                super::$test(true).await
            }
        }
    )*};
}
