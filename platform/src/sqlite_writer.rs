//! One thread that owns a SQLite database's write connection and commits, in one transaction,
//! every unit of work waiting for it (group commit).
//!
//! Why: sqlx runs each SQLite connection on a thread of its own and hands it every statement,
//! BEGIN and COMMIT over a channel, so a store operation of four statements is four hand-offs to
//! that thread and four back, and on two cores those wake-ups are most of what an order costs
//! (docs/benchmarks.md, "Cost of one order": a one-row commit is 162 us of CPU through sqlx and
//! 18.6 us with SQLite's library on one thread). Here a unit of work (every statement of one store
//! operation, with the decisions between them) is one closure, handed over once and answered
//! once; the thread takes every unit waiting when it wakes and commits them together.
//!
//! What each caller can rely on:
//! - **Durable before answered.** A unit's result is sent only after the COMMIT of its group
//!   returned, so an answer the caller acts on is on disk as the connection's settings make it
//!   (WAL, `synchronous = NORMAL`, as sqlx's connections are opened in [`crate::db`]).
//! - **Alone in its failure.** Each unit runs inside a savepoint of its own. A unit that returns
//!   an error (or panics) is rolled back to its savepoint and answered with its error; the units
//!   before and after it in the group commit as if it had not run.
//! - **Serial.** Units run one after another in the order they arrived, each seeing what the
//!   earlier ones wrote, so a conditional write (`... WHERE status = $expected`) decides races as
//!   it does on one connection.
//! - **All or nothing per group.** Should the COMMIT itself fail, every unit of the group is
//!   answered with that error and nothing of the group is kept.
//!
//! A unit must not wait for anything but SQLite: it runs on the writer's thread, and every other
//! unit waits behind it.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use rusqlite::{Connection, config::DbConfig};
use tokio::sync::oneshot;

/// At most this many units in one transaction: a group is answered only once it commits, so an
/// unbounded group would hold its first callers while later ones keep arriving.
const MAX_GROUP: usize = 256;

/// Prepared statements the connection keeps: every statement a service's store runs, and the
/// writer's own (BEGIN, SAVEPOINT ...), each parsed once.
const STATEMENT_CACHE: usize = 128;

/// Runs one of the writer's own statements (no parameters, no rows), prepared once.
fn run_own(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Why a unit of work could not be carried out, from the writer's side.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open SQLite database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot start the SQLite writer thread: {0}")]
    Start(std::io::Error),
    #[error("the SQLite writer thread has stopped")]
    Stopped,
    #[error("a unit of work panicked: {0}")]
    Panicked(String),
}

/// A unit of work as the writer thread sees it: runs against the connection (inside its own
/// savepoint), or is told it will not run (`None`: its group broke before it), and returns how to
/// answer once the group's outcome is known.
type Job = Box<dyn FnOnce(Option<&mut Connection>) -> Settle + Send>;

/// A unit's answer, waiting for its group's commit: `ok` says whether the unit's own work
/// succeeded (and its savepoint is to be kept); `answer` is called with the commit's outcome.
struct Settle {
    ok: bool,
    answer: Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>,
}

/// The handle callers share: cheap to clone; the thread stops when the last handle is dropped,
/// after the units already handed to it.
#[derive(Clone)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("groups", &self.stats.groups.load(Ordering::Relaxed))
            .field("waiting", &self.stats.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// The writer's counts: groups committed, units waiting for the thread.
#[derive(Debug, Default)]
struct Stats {
    groups: AtomicU64,
    waiting: AtomicU64,
}

impl SqliteWriter {
    /// Opens `path` (creating it if missing) with the services' settings and starts its writer
    /// thread. The schema is the caller's (the services migrate through sqlx first).
    pub fn open(path: &Path) -> Result<Self, WriterError> {
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            // As crate::db opens sqlx's connections: WAL, durable against a process crash,
            // queueing for the lock rather than failing at once beside another connection.
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
            )?;
            // A store's statements, and this thread's own, stay prepared (16 by default).
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            // ... and stay as prepared: without the query planner stability guarantee, binding a
            // parameter the planner looked at (a `LIMIT $3`) made SQLite parse and plan the
            // statement again on its next step, every call (the relay's claim, 3.6 % of the
            // writer threads' time).
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
            Ok(conn)
        };
        let mut conn = open(path).map_err(|source| WriterError::Open {
            path: path.to_owned(),
            source,
        })?;
        let (jobs, waiting) = mpsc::channel::<Job>();
        let stats = Arc::new(Stats::default());
        let counted = Arc::clone(&stats);
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(&mut conn, &waiting, &counted))
            .map_err(WriterError::Start)?;
        Ok(Self { jobs, stats })
    }

    /// Hands `work` to the writer's thread as one unit (see the module's contract) now, in the
    /// order of the calls, and returns a future of its result once its group is committed (the
    /// unit runs whether or not the future is awaited). `work`'s error type says what the unit
    /// found wrong; the writer's own failures reach the caller through `From<WriterError>`.
    pub fn unit<T, E, W>(&self, work: W) -> impl Future<Output = Result<T, E>> + Send + use<T, E, W>
    where
        W: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<WriterError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |conn| {
            let ran = conn.is_some();
            let result = match conn {
                Some(conn) => catch_unwind(AssertUnwindSafe(|| work(conn)))
                    .unwrap_or_else(|panic| Err(WriterError::Panicked(panic_text(&panic)).into())),
                // Answered with the group's error below (a group that breaks never commits).
                None => Err(WriterError::Stopped.into()),
            };
            Settle {
                ok: result.is_ok(),
                answer: Box::new(move |commit| {
                    let result = match commit {
                        Ok(()) => result,
                        // The unit's own error says more than its group failing after it.
                        Err(_) if ran && result.is_err() => result,
                        Err(error) => Err(WriterError::Sqlite(unshare(&error)).into()),
                    };
                    // The caller may have gone (its call was cancelled); the unit stands.
                    let _ = reply.send(result);
                }),
            }
        });
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.jobs.send(job);
        if sent.is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        async move {
            sent.map_err(|_| WriterError::Stopped)?;
            answer.await.map_err(|_| WriterError::Stopped)?
        }
    }

    /// Groups committed so far (a group is one transaction).
    pub fn groups(&self) -> u64 {
        self.stats.groups.load(Ordering::Relaxed)
    }

    /// Units handed over and not yet taken by the thread: the queue callers wait in.
    pub fn waiting(&self) -> u64 {
        self.stats.waiting.load(Ordering::Relaxed)
    }
}

/// The writer thread: sleeps until a unit arrives, takes every unit waiting (up to
/// [`MAX_GROUP`]), runs each in a savepoint of its own inside one transaction, commits, answers.
fn run(conn: &mut Connection, waiting: &mpsc::Receiver<Job>, stats: &Stats) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut settled: Vec<Settle> = Vec::with_capacity(MAX_GROUP);
    while let Ok(first) = waiting.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match waiting.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        stats
            .waiting
            .fetch_sub(group.len() as u64, Ordering::Relaxed);
        let commit = commit_group(conn, &mut group, &mut settled);
        if commit.is_ok() {
            stats.groups.fetch_add(1, Ordering::Relaxed);
        }
        let commit = commit.map_err(Arc::new);
        for settle in settled.drain(..) {
            (settle.answer)(commit.clone());
        }
    }
}

/// Runs `group`'s units in one transaction, each in a savepoint, leaving their answers in
/// `settled`; returns the outcome of the transaction as a whole.
fn commit_group(
    conn: &mut Connection,
    group: &mut Vec<Job>,
    settled: &mut Vec<Settle>,
) -> rusqlite::Result<()> {
    let began = run_own(conn, "BEGIN IMMEDIATE");
    if let Err(error) = began {
        // Nothing ran: every unit is answered with why (not run, so not its own error).
        settled.extend(group.drain(..).map(|job| job(None)));
        return Err(error);
    }
    let mut broken = None;
    for job in group.drain(..) {
        if broken.is_some() {
            settled.push(job(None));
            continue;
        }
        if let Err(error) = run_own(conn, "SAVEPOINT unit") {
            settled.push(job(None));
            broken = Some(error);
            continue;
        }
        let settle = job(Some(&mut *conn));
        let closed = if settle.ok {
            run_own(conn, "RELEASE unit")
        } else {
            run_own(conn, "ROLLBACK TO unit").and_then(|()| run_own(conn, "RELEASE unit"))
        };
        settled.push(settle);
        if let Err(error) = closed {
            broken = Some(error);
        }
    }
    match broken {
        None => run_own(conn, "COMMIT").inspect_err(|_| {
            let _ = run_own(conn, "ROLLBACK");
        }),
        Some(error) => {
            let _ = run_own(conn, "ROLLBACK");
            Err(error)
        }
    }
}

/// An owned copy of a shared rusqlite error (rusqlite's errors are not Clone): its SQLite code
/// and message, which is what a caller can act on.
fn unshare(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit's error in these tests: what SQLite or the writer said.
    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Writer(#[from] WriterError),
        #[error(transparent)]
        Sqlite(#[from] rusqlite::Error),
        #[error("the unit gave up: {0}")]
        GaveUp(&'static str),
    }

    fn writer_on_table(dir: &tempfile::TempDir) -> (SqliteWriter, PathBuf) {
        let path = dir.path().join("w.db");
        let writer = SqliteWriter::open(&path).expect("open");
        (writer, path)
    }

    async fn create_table(writer: &SqliteWriter) {
        writer
            .unit(|db| -> Result<(), TestError> {
                db.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, owner TEXT)")?;
                Ok(())
            })
            .await
            .expect("schema");
    }

    fn insert(id: String) -> impl FnOnce(&mut Connection) -> Result<(), TestError> + Send {
        move |db| {
            db.prepare_cached("INSERT INTO t (id) VALUES ($1)")?
                .execute([id])?;
            Ok(())
        }
    }

    /// Rows in `t` as another connection sees them: only what was committed.
    fn committed(path: &Path) -> Vec<String> {
        let db = Connection::open(path).expect("reader");
        let mut select = db.prepare("SELECT id FROM t ORDER BY id").expect("select");
        select
            .query_map([], |row| row.get(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("ids")
    }

    /// Holds the writer's thread in a unit until the returned sender is used, so that the units
    /// sent meanwhile wait and are taken as one group.
    async fn hold(
        writer: &SqliteWriter,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let writer = writer.clone();
        let unit = tokio::spawn(async move {
            writer
                .unit(move |_| -> Result<(), TestError> {
                    let _ = started.send(());
                    let _ = held.recv();
                    Ok(())
                })
                .await
                .expect("holding unit");
        });
        running.await.expect("the holding unit runs");
        (release, unit)
    }

    /// A kept statement is planned once: binding its `LIMIT` again must not make SQLite parse and
    /// plan it anew (which it does, every call, without the query planner stability guarantee).
    #[tokio::test]
    async fn a_kept_statement_is_not_prepared_again_when_its_parameters_change() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, _) = writer_on_table(&dir);
        create_table(&writer).await;
        for i in 0..5 {
            writer.unit(insert(format!("r{i}"))).await.expect("insert");
        }
        let mut reprepared = Vec::new();
        for limit in 1..=4 {
            let count = writer
                .unit(move |db| -> Result<i32, TestError> {
                    let mut select =
                        db.prepare_cached("SELECT id FROM t WHERE id >= $1 ORDER BY id LIMIT $2")?;
                    let rows = select
                        .query_map(rusqlite::params!["r", limit], |row| row.get::<_, String>(0))?;
                    assert_eq!(rows.count(), usize::try_from(limit).expect("small"));
                    Ok(select.get_status(rusqlite::StatementStatus::RePrepare))
                })
                .await
                .expect("select");
            reprepared.push(count);
        }
        assert_eq!(reprepared, [0, 0, 0, 0], "times SQLite prepared it again");
    }

    #[tokio::test]
    async fn units_waiting_together_commit_in_one_transaction_and_each_is_answered_after_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, path) = writer_on_table(&dir);
        create_table(&writer).await;
        let groups_before = writer.groups();

        let (release, holding) = hold(&writer).await;
        let callers: Vec<_> = (0..50)
            .map(|n| {
                let writer = writer.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    writer
                        .unit(insert(format!("{n:02}")))
                        .await
                        .expect("insert");
                    // Answered only once committed: another connection sees the row already.
                    assert!(committed(&path).contains(&format!("{n:02}")));
                })
            })
            .collect();
        // Every caller has handed its unit over before the writer is let go.
        while writer.waiting() < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        release.send(()).expect("release");
        holding.await.expect("held unit");
        for caller in callers {
            caller.await.expect("caller");
        }
        assert_eq!(committed(&path).len(), 50);
        // The holding unit's group, then one group for the 50 (taken while they all waited).
        assert_eq!(writer.groups() - groups_before, 2, "{writer:?}");
    }

    #[tokio::test]
    async fn a_unit_that_fails_or_panics_is_undone_alone_and_its_group_commits() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, path) = writer_on_table(&dir);
        create_table(&writer).await;

        let (release, holding) = hold(&writer).await;
        let first = tokio::spawn(writer.unit(insert("a".into())));
        let failing = tokio::spawn(writer.unit(|db| -> Result<(), TestError> {
            insert("b".into())(db)?;
            Err(TestError::GaveUp("after writing b"))
        }));
        let panicking = tokio::spawn(writer.unit(|db| -> Result<(), TestError> {
            insert("c".into())(db)?;
            panic!("in the middle of a unit");
        }));
        let duplicate = tokio::spawn(writer.unit(insert("a".into())));
        let last = tokio::spawn(writer.unit(insert("d".into())));
        while writer.waiting() < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let groups_before = writer.groups();
        release.send(()).expect("release");
        holding.await.expect("held unit");

        first.await.expect("task").expect("a");
        let failed = failing.await.expect("task").expect_err("b gave up");
        assert!(matches!(failed, TestError::GaveUp(_)), "{failed}");
        let panicked = panicking.await.expect("task").expect_err("c panicked");
        assert!(
            panicked.to_string().contains("in the middle of a unit"),
            "{panicked}"
        );
        let refused = duplicate.await.expect("task").expect_err("a again");
        assert!(refused.to_string().contains("UNIQUE"), "{refused}");
        last.await.expect("task").expect("d");
        // b and c were written and undone with their units; a and d committed around them.
        assert_eq!(committed(&path), ["a", "d"]);
        assert_eq!(
            writer.groups() - groups_before,
            2,
            "held, then the five: {writer:?}"
        );
        // And the writer goes on.
        writer.unit(insert("e".into())).await.expect("after");
        assert_eq!(committed(&path), ["a", "d", "e"]);
    }

    #[tokio::test]
    async fn units_in_one_group_see_each_others_writes_so_a_conditional_write_decides_a_race() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, path) = writer_on_table(&dir);
        create_table(&writer).await;
        writer.unit(insert("order".into())).await.expect("row");

        let (release, holding) = hold(&writer).await;
        let claims: Vec<_> = ["first", "second", "third"]
            .into_iter()
            .map(|owner| {
                tokio::spawn(writer.unit(move |db| -> Result<bool, TestError> {
                    let changed = db
                        .prepare_cached(
                            "UPDATE t SET owner = $1 WHERE id = 'order' AND owner IS NULL",
                        )?
                        .execute([owner])?;
                    Ok(changed == 1)
                }))
            })
            .collect();
        while writer.waiting() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        release.send(()).expect("release");
        holding.await.expect("held unit");
        let mut won = Vec::new();
        for claim in claims {
            won.push(claim.await.expect("task").expect("claim"));
        }
        assert_eq!(
            won,
            [true, false, false],
            "the first claim in the group wins, alone"
        );
        let db = Connection::open(&path).expect("reader");
        let owner: String = db
            .query_row("SELECT owner FROM t WHERE id = 'order'", [], |row| {
                row.get(0)
            })
            .expect("owner");
        assert_eq!(owner, "first");
    }

    #[tokio::test]
    async fn a_writer_that_cannot_open_its_file_says_which() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("missing-dir/w.db");
        let error = SqliteWriter::open(&path).expect_err("no directory");
        assert!(error.to_string().contains("missing-dir/w.db"), "{error}");
    }
}
