//! A store operation written once for both backends. Its statements (the same SQL on both: `$N`
//! parameters, `ON CONFLICT`, `RETURNING`) run on a [`Conn`], which is:
//! - on a SQLite file, the connection of the database's writer thread, inside the operation's own
//!   savepoint in a group commit ([`crate::sqlite_writer`]): one hand-off to that thread and one
//!   back for the whole operation, where sqlx costs two per statement, BEGIN and COMMIT included;
//! - on PostgreSQL (and on `sqlite::memory:`, which only sqlx's one connection can see), a sqlx
//!   connection from the pool, in the caller's task.
//!
//! [`Db::transaction`] runs an operation whose statements commit together or not at all;
//! [`Db::statements`] one whose statements need not (on sqlx, each commits on its own, and the
//! BEGIN and COMMIT round trips are saved). Either way what it returns is answered only once its
//! writes are committed. An operation awaits only its `Conn`: on SQLite it is
//! polled on the writer's thread, where nothing else can wake it.

use std::{
    borrow::Cow,
    cell::{OnceCell, RefCell},
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    rc::Rc,
    sync::Arc,
};

use futures::FutureExt;
use sqlx::{Column as _, Row as _, ValueRef as _, any::AnyTypeInfoKind};

use crate::{
    db::{DbError, Migrations, Pool},
    sqlite_writer::{SqliteWriter, WriterError},
};

/// A future borrowing the operation's connection.
pub type ConnFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// A value bound to a `$N` parameter. Typed even when NULL: PostgreSQL takes each parameter as
/// the type sqlx declares for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl From<i64> for Param {
    fn from(value: i64) -> Self {
        Param::Int(Some(value))
    }
}
impl From<&str> for Param {
    fn from(value: &str) -> Self {
        Param::Text(Some(value.to_owned()))
    }
}
impl From<String> for Param {
    fn from(value: String) -> Self {
        Param::Text(Some(value))
    }
}
impl From<&String> for Param {
    fn from(value: &String) -> Self {
        Param::Text(Some(value.clone()))
    }
}
impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Self {
        Param::Text(value)
    }
}
impl From<Vec<u8>> for Param {
    fn from(value: Vec<u8>) -> Self {
        Param::Blob(Some(value))
    }
}

/// A column's value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row as read: its values by column name.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// The value of `column` as `T`; an error naming the column if there is none or it does not
    /// convert (a schema and its code disagreeing, not bad input).
    pub fn get<T: FromValue>(&self, column: &str) -> Result<T, sqlx::Error> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))?;
        T::from_value(&self.values[index]).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!(
                "{:?} is not a {}",
                self.values[index],
                std::any::type_name::<T>()
            )
            .into(),
        })
    }
}

/// A Rust value a column converts to.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
}
impl FromValue for i32 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => i32::try_from(*v).ok(),
            _ => None,
        }
    }
}
impl From<i32> for Param {
    fn from(value: i32) -> Self {
        Param::Int(Some(i64::from(value)))
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(v) => Some(v.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// What an operation runs its statements on (see the module's documentation).
pub trait Conn: Send {
    /// Runs `sql` with `params` for `$1`, `$2` ...; returns how many rows it changed.
    fn execute<'c>(&'c mut self, sql: &'c str, params: &'c [Param]) -> ConnFuture<'c, u64>;

    /// Runs `sql` with `params` and returns every row it gives.
    fn fetch_all<'c>(&'c mut self, sql: &'c str, params: &'c [Param]) -> ConnFuture<'c, Vec<Row>>;

    /// Runs `sql` with `params` and returns its first row, if any.
    fn fetch_optional<'c>(
        &'c mut self,
        sql: &'c str,
        params: &'c [Param],
    ) -> ConnFuture<'c, Option<Row>> {
        Box::pin(async move { Ok(self.fetch_all(sql, params).await?.into_iter().next()) })
    }
}

/// Where a store's operations run: the writer thread of its SQLite file, or its sqlx pool.
#[derive(Debug, Clone)]
pub enum Db {
    Writer(SqliteWriter),
    Sqlx(Pool),
}

impl Db {
    /// Opens the database at `url`, brings its schema up to date ([`crate::db::open`]), and
    /// returns where its operations run. On a SQLite file the writer thread takes over: sqlx's
    /// connection, needed only to migrate, is closed (its thread with it).
    pub async fn open(url: &str, migrations: &Migrations) -> Result<Self, DbError> {
        let pool = crate::db::open(url, migrations).await?;
        let db = Self::for_pool(&pool).map_err(|source| DbError::Writer {
            url: crate::pii::redact_url_password(url),
            source,
        })?;
        if matches!(db, Db::Writer(_)) {
            pool.close().await;
        }
        Ok(db)
    }

    /// The place for `pool`'s database (already migrated): a writer thread on a SQLite file, the
    /// pool itself on PostgreSQL and on an in-memory SQLite database.
    pub fn for_pool(pool: &Pool) -> Result<Self, WriterError> {
        match sqlite_file(pool) {
            Some(path) => Ok(Db::Writer(SqliteWriter::open(&path)?)),
            None => Ok(Db::Sqlx(pool.clone())),
        }
    }

    /// Which database this is: the SQL a store writes can depend on it (its clock, row locks).
    pub fn backend(&self) -> crate::db::Backend {
        match self {
            Db::Writer(_) => crate::db::Backend::Sqlite,
            Db::Sqlx(pool) => crate::db::Backend::of_pool(pool),
        }
    }

    /// Runs `operation` as one unit, all or nothing (a transaction of its own on sqlx, a
    /// savepoint of a group commit on the writer), and returns its result once committed. An
    /// error from `operation` undoes all of its writes.
    pub async fn transaction<T, F>(&self, operation: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Conn) -> ConnFuture<'c, T> + Send + 'static,
    {
        match self {
            Db::Writer(writer) => on_writer(writer, operation).await,
            Db::Sqlx(pool) => {
                let mut tx = pool.begin().await?;
                let result = operation(&mut SqlxConn(&mut tx)).await?;
                tx.commit().await?;
                Ok(result)
            }
        }
    }

    /// Runs `operation`, whose statements need not commit together (a read, or an insert that
    /// reads what holds the key when it finds it taken): on sqlx each commits on its own, without
    /// a BEGIN and a COMMIT around them (two round trips to a PostgreSQL server saved); on the
    /// writer it is a unit like any other.
    pub async fn statements<T, F>(&self, operation: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut dyn Conn) -> ConnFuture<'c, T> + Send + 'static,
    {
        match self {
            Db::Writer(writer) => on_writer(writer, operation).await,
            Db::Sqlx(pool) => {
                let mut connection = pool.acquire().await?;
                operation(&mut SqlxConn(&mut connection)).await
            }
        }
    }
}

impl Db {
    /// Runs the one statement `sql` with `params` on its own; returns how many rows it changed.
    pub async fn execute(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<Param>,
    ) -> Result<u64, sqlx::Error> {
        let sql = sql.into();
        self.statements(move |conn| Box::pin(async move { conn.execute(&sql, &params).await }))
            .await
    }

    /// Runs the one query `sql` with `params` on its own; returns its rows, each read by `decode`.
    pub async fn fetch_all<T: Send + 'static>(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<Param>,
        decode: fn(&Row) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<T>, sqlx::Error> {
        let sql = sql.into();
        self.statements(move |conn| {
            Box::pin(async move {
                conn.fetch_all(&sql, &params)
                    .await?
                    .iter()
                    .map(decode)
                    .collect()
            })
        })
        .await
    }
}

/// Runs `operation` as a unit on `writer`'s thread.
async fn on_writer<T, F>(writer: &SqliteWriter, operation: F) -> Result<T, sqlx::Error>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut dyn Conn) -> ConnFuture<'c, T> + Send + 'static,
{
    writer
        .unit(move |connection: &mut rusqlite::Connection| {
            // Ready at once: every statement completes synchronously on this thread.
            operation(&mut SqliteConn(connection))
                .now_or_never()
                .unwrap_or_else(|| {
                    Err(sqlx::Error::Protocol(
                        "a store operation awaited something other than its connection".into(),
                    ))
                })
        })
        .await
}

/// The file behind a SQLite pool; None for PostgreSQL and for an in-memory database.
fn sqlite_file(pool: &Pool) -> Option<PathBuf> {
    let url = &pool.connect_options().database_url;
    (url.scheme() == "sqlite")
        .then(|| crate::db::sqlite_file(url.as_str()).map(Path::to_owned))
        .flatten()
}

impl From<WriterError> for sqlx::Error {
    fn from(error: WriterError) -> Self {
        match error {
            WriterError::Sqlite(error) => sqlite_error(error),
            other => sqlx::Error::Protocol(other.to_string()),
        }
    }
}

/// A SQLite error as sqlx reports a database's: with its kind (a unique key taken, ...).
fn sqlite_error(error: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(SqliteFailure(error)))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SqliteFailure(rusqlite::Error);

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message,
            _ => "SQLite error",
        }
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.0
            .sqlite_error()
            .map(|e| Cow::Owned(e.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        match self.0.sqlite_error().map(|e| e.extended_code) {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                sqlx::error::ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => sqlx::error::ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => sqlx::error::ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => sqlx::error::ErrorKind::CheckViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

/// The writer thread's connection, inside the operation's savepoint.
struct SqliteConn<'a>(&'a mut rusqlite::Connection);

impl SqliteConn<'_> {
    /// `sql` prepared (kept in the connection's cache) with `params` bound, and its [`Shape`]:
    /// `$N` is written `?N` for SQLite, whose parameter `?N` has index N, so each value is bound by
    /// its number with no lookup of parameter names (a lookup SQLite makes by walking a list, once
    /// per parameter: a batch INSERT of 800 parameters spent its time there). A statement may use
    /// `$2` before `$1`, or `$1` twice.
    fn prepared<'s>(
        &'s self,
        sql: &str,
        params: &[Param],
    ) -> Result<(rusqlite::CachedStatement<'s>, Rc<Shape>), sqlx::Error> {
        let shape = Shape::of(sql);
        let mut statement = self.0.prepare_cached(&shape.sql).map_err(sqlite_error)?;
        let wanted = statement.parameter_count();
        if params.len() < wanted {
            return Err(sqlx::Error::Protocol(format!(
                "{sql:?} takes {wanted} parameters, {} given",
                params.len()
            )));
        }
        for (index, param) in params.iter().enumerate().take(wanted) {
            let bound = match param {
                Param::Int(v) => statement.raw_bind_parameter(index + 1, v),
                Param::Text(v) => statement.raw_bind_parameter(index + 1, v),
                Param::Blob(v) => statement.raw_bind_parameter(index + 1, v),
            };
            bound.map_err(sqlite_error)?;
        }
        Ok((statement, shape))
    }

    fn rows(&self, sql: &str, params: &[Param]) -> Result<Vec<Row>, sqlx::Error> {
        let (mut statement, shape) = self.prepared(sql, params)?;
        let names = |statement: &rusqlite::Statement<'_>| -> Arc<[String]> {
            statement
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        let columns = match shape.columns.get() {
            // The same columns as last time (a schema change since would show in their count).
            Some(columns) if columns.len() == statement.column_count() => Arc::clone(columns),
            _ => {
                let columns = names(&statement);
                let _ = shape.columns.set(Arc::clone(&columns));
                columns
            }
        };
        let mut rows = statement.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let values = (0..columns.len())
                .map(|i| {
                    Ok(match row.get_ref(i).map_err(sqlite_error)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                        rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                        rusqlite::types::ValueRef::Text(v) => {
                            Value::Text(String::from_utf8_lossy(v).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(v) => Value::Blob(v.to_vec()),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?;
            out.push(Row {
                columns: Arc::clone(&columns),
                values,
            });
        }
        Ok(out)
    }
}

/// What the writer thread keeps of a statement the stores run again and again: its text as
/// SQLite takes it and, once it has run, its column names, which every row it returns shares.
/// Worked out once per statement instead of per call (rewriting the text allocated, and so did
/// naming the columns of every query).
struct Shape {
    sql: String,
    columns: OnceCell<Arc<[String]>>,
}

/// At most this many shapes are kept; past it they are all forgotten and found again as used
/// (the stores run a few dozen statements; this only bounds a caller that builds SQL from data).
const SHAPES_KEPT: usize = 512;

thread_local! {
    /// The shapes of the statements run on this thread (a writer thread: units run nowhere else),
    /// by the stores' SQL text.
    static SHAPES: RefCell<HashMap<String, Rc<Shape>>> = RefCell::new(HashMap::new());
}

impl Shape {
    fn of(sql: &str) -> Rc<Shape> {
        SHAPES.with_borrow_mut(|shapes| {
            if let Some(shape) = shapes.get(sql) {
                return Rc::clone(shape);
            }
            if shapes.len() >= SHAPES_KEPT {
                shapes.clear();
            }
            let shape = Rc::new(Shape {
                sql: numbered_for_sqlite(sql).into_owned(),
                columns: OnceCell::new(),
            });
            shapes.insert(sql.to_owned(), Rc::clone(&shape));
            shape
        })
    }
}

impl SqliteConn<'_> {
    fn changes(&self, sql: &str, params: &[Param]) -> Result<u64, sqlx::Error> {
        let (mut statement, _) = self.prepared(sql, params)?;
        let changed = statement.raw_execute().map_err(sqlite_error)?;
        Ok(changed as u64)
    }
}

/// `sql` with each `$N` placeholder written `?N` (SQLite numbers `?N` as N, and `$N` in order
/// of appearance), leaving quoted text ('...' and "...") as it is.
fn numbered_for_sqlite(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '$') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Cow::Owned(out)
}

impl Conn for SqliteConn<'_> {
    fn execute<'c>(&'c mut self, sql: &'c str, params: &'c [Param]) -> ConnFuture<'c, u64> {
        Box::pin(std::future::ready(self.changes(sql, params)))
    }

    fn fetch_all<'c>(&'c mut self, sql: &'c str, params: &'c [Param]) -> ConnFuture<'c, Vec<Row>> {
        Box::pin(std::future::ready(self.rows(sql, params)))
    }
}

/// A sqlx connection: inside a transaction of the operation's own, or committing each statement.
struct SqlxConn<'a>(&'a mut sqlx::AnyConnection);

/// `sql` with `params` bound; prepared once and kept by the connection.
fn bound<'q>(
    sql: &'q str,
    params: &[Param],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for param in params {
        query = match param.clone() {
            Param::Int(v) => query.bind(v),
            Param::Text(v) => query.bind(v),
            Param::Blob(v) => query.bind(v),
        };
    }
    query
}

impl SqlxConn<'_> {
    async fn changes(&mut self, sql: &str, params: &[Param]) -> Result<u64, sqlx::Error> {
        Ok(bound(sql, params)
            .execute(&mut *self.0)
            .await?
            .rows_affected())
    }

    async fn rows(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, sqlx::Error> {
        let rows = bound(sql, params).fetch_all(&mut *self.0).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = first
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        rows.iter()
            .map(|row| {
                let values = (0..columns.len())
                    .map(|i| any_value(row, i))
                    .collect::<Result<_, _>>()?;
                Ok(Row {
                    columns: Arc::clone(&columns),
                    values,
                })
            })
            .collect()
    }
}

impl Conn for SqlxConn<'_> {
    fn execute<'c>(&'c mut self, sql: &'c str, params: &'c [Param]) -> ConnFuture<'c, u64> {
        Box::pin(self.changes(sql, params))
    }

    fn fetch_all<'c>(&'c mut self, sql: &'c str, params: &'c [Param]) -> ConnFuture<'c, Vec<Row>> {
        Box::pin(self.rows(sql, params))
    }
}

/// Column `i` of `row`, by the type the database gave it.
fn any_value(row: &sqlx::any::AnyRow, i: usize) -> Result<Value, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().kind();
    Ok(match kind {
        AnyTypeInfoKind::Null => Value::Null,
        AnyTypeInfoKind::Bool => Value::Int(i64::from(row.try_get::<bool, _>(i)?)),
        AnyTypeInfoKind::SmallInt => Value::Int(i64::from(row.try_get::<i16, _>(i)?)),
        AnyTypeInfoKind::Integer => Value::Int(i64::from(row.try_get::<i32, _>(i)?)),
        AnyTypeInfoKind::BigInt => Value::Int(row.try_get::<i64, _>(i)?),
        AnyTypeInfoKind::Real => Value::Real(f64::from(row.try_get::<f32, _>(i)?)),
        AnyTypeInfoKind::Double => Value::Real(row.try_get::<f64, _>(i)?),
        AnyTypeInfoKind::Text => Value::Text(row.try_get::<String, _>(i)?),
        AnyTypeInfoKind::Blob => Value::Blob(row.try_get::<Vec<u8>, _>(i)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migrated database of each kind this module runs on without a server: a SQLite file (the
    /// writer thread) and SQLite in memory (sqlx). PostgreSQL runs the services' store tests.
    async fn both(dir: &tempfile::TempDir) -> Vec<(&'static str, Db)> {
        let mut out = Vec::new();
        for (name, url) in [
            (
                "file",
                format!("sqlite://{}", dir.path().join("u.db").display()),
            ),
            ("memory", "sqlite::memory:".to_owned()),
        ] {
            let pool = crate::db::connect(&url).await.expect("connect");
            sqlx::raw_sql("CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, body BLOB, note TEXT)")
                .execute(&pool)
                .await
                .expect("schema");
            let db = Db::for_pool(&pool).expect("db");
            assert_eq!(
                matches!(db, Db::Writer(_)),
                name == "file",
                "{name}: {db:?}"
            );
            out.push((name, db));
        }
        out
    }

    /// Inserts (id, n) unless id is taken; returns the row holding id: two statements and a
    /// decision between them, as the stores' operations are.
    async fn insert_or_get(db: &Db, id: &str, n: i64) -> Result<Row, sqlx::Error> {
        let params = vec![Param::from(n), Param::from(id), Param::Blob(None)];
        db.statements(move |conn| {
            Box::pin(async move {
                // $2 before $1, $3 a typed NULL.
                let inserted = conn
                    .fetch_optional(
                        "INSERT INTO t (id, n, body) VALUES ($2, $1, $3) ON CONFLICT (id) DO NOTHING RETURNING *",
                        &params,
                    )
                    .await?;
                match inserted {
                    Some(row) => Ok(row),
                    None => conn
                        .fetch_optional("SELECT * FROM t WHERE id = $1", &params[1..2])
                        .await?
                        .ok_or(sqlx::Error::RowNotFound),
                }
            })
        })
        .await
    }

    #[tokio::test]
    async fn an_operation_of_several_statements_runs_alike_on_the_writer_and_on_sqlx() {
        let dir = tempfile::tempdir().expect("dir");
        for (name, db) in both(&dir).await {
            let first = insert_or_get(&db, "a", 7).await.expect(name);
            assert_eq!(first.get::<String>("id").expect(name), "a");
            assert_eq!(first.get::<i64>("n").expect(name), 7);
            assert_eq!(first.get::<Option<Vec<u8>>>("body").expect(name), None);
            let again = insert_or_get(&db, "a", 8).await.expect(name);
            assert_eq!(
                again.get::<i64>("n").expect(name),
                7,
                "{name}: the first row"
            );
            let missing = first.get::<i64>("nope").expect_err(name);
            assert!(missing.to_string().contains("nope"), "{name}: {missing}");
            let wrong = first.get::<i64>("id").expect_err(name);
            assert!(wrong.to_string().contains("id"), "{name}: {wrong}");

            let blob = vec![0u8, 1, 2, 255];
            let params = vec![Param::from(blob.clone()), Param::from("b")];
            let changed = db
                .transaction(move |conn| {
                    Box::pin(async move {
                        conn.execute(
                            "INSERT INTO t (id, body, note) VALUES ($2, $1, $2)",
                            &params,
                        )
                        .await
                    })
                })
                .await
                .expect(name);
            assert_eq!(changed, 1, "{name}");
            let row = insert_or_get(&db, "b", 0).await.expect(name);
            assert_eq!(row.get::<Option<Vec<u8>>>("body").expect(name), Some(blob));
            assert_eq!(
                row.get::<Option<String>>("note").expect(name).as_deref(),
                Some("b")
            );
            assert_eq!(row.get::<Option<i64>>("n").expect(name), None);
        }
    }

    #[test]
    fn placeholders_are_numbered_for_sqlite_outside_quoted_text() {
        assert_eq!(
            numbered_for_sqlite("UPDATE t SET a = $2, b = '$1 it''s', \"$3\" = $10 WHERE id = $1"),
            "UPDATE t SET a = ?2, b = '$1 it''s', \"$3\" = ?10 WHERE id = ?1"
        );
        assert!(matches!(numbered_for_sqlite("SELECT 1"), Cow::Borrowed(_)));
    }

    #[tokio::test]
    async fn an_operation_that_fails_after_writing_leaves_nothing_and_says_why() {
        let dir = tempfile::tempdir().expect("dir");
        for (name, db) in both(&dir).await {
            let failed = db
                .transaction(|conn| {
                    Box::pin(async move {
                        conn.execute("INSERT INTO t (id) VALUES ($1)", &[Param::from("x")])
                            .await?;
                        // The key is taken now: the second insert fails, and so does the unit.
                        conn.execute("INSERT INTO t (id) VALUES ($1)", &[Param::from("x")])
                            .await
                    })
                })
                .await
                .expect_err(name);
            let kind = failed.as_database_error().map(|e| e.kind());
            assert!(
                matches!(kind, Some(sqlx::error::ErrorKind::UniqueViolation)),
                "{name}: {failed} ({kind:?})"
            );
            let left = db
                .statements(|conn| {
                    Box::pin(async move { conn.fetch_all("SELECT id FROM t", &[]).await })
                })
                .await
                .expect(name);
            assert!(left.is_empty(), "{name}: {left:?}");
        }
    }

    #[tokio::test]
    async fn an_operation_awaiting_anything_but_its_connection_on_the_writer_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, db) = both(&dir).await.remove(0);
        let error = db
            .transaction(|conn| {
                Box::pin(async move {
                    conn.execute("INSERT INTO t (id) VALUES ($1)", &[Param::from("y")])
                        .await?;
                    tokio::task::yield_now().await;
                    Ok(())
                })
            })
            .await
            .expect_err("not ready at once");
        assert!(error.to_string().contains("awaited"), "{error}");
        let left = db
            .statements(|conn| {
                Box::pin(async move { conn.fetch_all("SELECT id FROM t", &[]).await })
            })
            .await
            .expect("read");
        assert!(left.is_empty(), "the insert before it was undone: {left:?}");
    }
}
