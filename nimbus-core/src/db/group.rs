//! Group commit for SQLite's single writer: writers of this process take turns in
//! one open write transaction, and the last of a group commits it for all of them.
//!
//! SQLite has one write lock. Writers that each `BEGIN IMMEDIATE … COMMIT` contend
//! for it through its busy handler (which sleeps up to 100 ms between tries), and
//! each pays a begin and a commit (an fsync). Here a writer waits for its turn in an
//! async queue, runs its statements in the group's transaction, and then either
//! leaves the transaction open for the writers queued behind it or, when none is
//! queued (or the group is full or has been open long enough), commits it.
//! [`Turn::commit`] returns once the writer's statements are durable with its
//! group's: a writer never goes on before its writes are committed.
//!
//! Each turn is a savepoint in the group's transaction, so a writer can undo its own
//! statements ([`Turn::rollback`], or its `Turn` dropped unfinished, as when an error
//! ends it mid-way) and the group goes on without them. Only a failed commit fails
//! the whole group, and every member hears it. On PostgreSQL (row locks, real
//! concurrency) a turn is a plain transaction of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::Batch;

/// The most writers in one group.
const MAX_GROUP: usize = 32;
/// The longest a group stays open for writers queued behind it.
const MAX_OPEN: Duration = Duration::from_millis(5);
/// The longest a group waits for writers outside it before it begins.
const MAX_YIELD: Duration = Duration::from_millis(20);

/// The group's open transaction.
struct Open {
    txn: DatabaseTransaction,
    members: usize,
    since: Instant,
    /// Some(true) once committed, Some(false) if rolled back.
    done: watch::Sender<Option<bool>>,
}

/// One database's group.
struct Group {
    open: Arc<Mutex<Option<Open>>>,
    /// Writers queued for a turn.
    queued: AtomicUsize,
}

/// The groups, by database file: a process may hold several databases (tests do),
/// and a group's transaction is one database's.
static GROUPS: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<Group>>>> =
    LazyLock::new(Default::default);

/// A writer's turn: its statements go to [`Turn::txn`]; [`Turn::commit`] ends it.
pub struct Turn {
    group: Option<Arc<Group>>,
    shared: Option<OwnedMutexGuard<Option<Open>>>,
    /// The writer's savepoint in the group's transaction (SQLite), or its own
    /// transaction (PostgreSQL).
    own: Option<DatabaseTransaction>,
}

/// Waits for a turn at writing (SQLite), or begins a transaction (PostgreSQL).
pub async fn turn(db: &DatabaseConnection) -> Result<Turn, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(Turn {
            group: None,
            shared: None,
            own: Some(super::begin_write(db).await?),
        });
    }
    let (group, mut g) = enter(db).await?;
    let open = g.as_mut().expect("the group is open");
    // A writer that cannot set its savepoint leaves the group as it found it: the
    // guard goes, and the group is finished by whoever comes next.
    let own = match open.txn.begin().await {
        Ok(sp) => sp,
        Err(e) => {
            finish_in_background(group, g);
            return Err(e);
        }
    };
    open.members += 1;
    Ok(Turn {
        group: Some(group),
        shared: Some(g),
        own: Some(own),
    })
}

/// Runs `batch` as one writer's whole turn, and returns once it is committed. On
/// SQLite it is one round trip to the database: the batch's statements go in one
/// text, inside a savepoint of their own when there are several (a single statement
/// that fails undoes only itself). A writer whose statements need no reading in
/// between uses this instead of [`turn`], which costs two more round trips (its
/// savepoint and their release).
pub async fn write(db: &DatabaseConnection, mut batch: Batch) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        let txn = super::begin_write(db).await?;
        batch.run(&txn).await?;
        return txn.commit().await;
    }
    let (group, mut g) = enter(db).await?;
    let open = g.as_mut().expect("the group is open");
    let ran = batch.run_alone(&open.txn).await;
    if ran.is_ok() {
        open.members += 1;
    }
    let committed = finish(group, g).await;
    ran.and(committed)
}

/// Waits for this process's turn at writing to `db` (SQLite), and opens the
/// group's transaction if none is open.
async fn enter(
    db: &DatabaseConnection,
) -> Result<(Arc<Group>, OwnedMutexGuard<Option<Open>>), DbErr> {
    let file = db
        .get_sqlite_connection_pool()
        .connect_options()
        .get_filename()
        .to_path_buf();
    let group = GROUPS
        .lock()
        .expect("lock")
        .entry(file)
        .or_insert_with(|| {
            Arc::new(Group {
                open: Arc::new(Mutex::new(None)),
                queued: AtomicUsize::new(0),
            })
        })
        .clone();
    let mut g = {
        // Counted while queued, and uncounted however the wait ends (a writer whose
        // future is dropped while it waits is not waited for).
        struct Queued<'a>(&'a AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        group.queued.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(&group.queued);
        group.open.clone().lock_owned().await
    };
    if g.is_none() {
        // Writers outside the group (autocommit statements, other processes) wait in
        // the busy handler, trying every 200 µs: while one has tried in the last
        // millisecond, the lock is left to it (up to `MAX_YIELD`), or groups begun back
        // to back would starve it.
        let yielding = Instant::now();
        while super::busy::waited_within(Duration::from_millis(1)) && yielding.elapsed() < MAX_YIELD
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        super::busy::GROUP_BEGINNING.store(true, Ordering::Relaxed);
        let txn = super::begin_write(db).await;
        super::busy::GROUP_BEGINNING.store(false, Ordering::Relaxed);
        *g = Some(Open {
            txn: txn?,
            members: 0,
            since: Instant::now(),
            done: watch::channel(None).0,
        });
    }
    Ok((group, g))
}

impl Turn {
    /// The transaction to write in.
    pub fn txn(&self) -> &DatabaseTransaction {
        self.own
            .as_ref()
            .expect("a turn has a transaction until it ends")
    }

    /// Ends a turn that wrote nothing, or whose writes it does not keep: they are
    /// undone (the writer's savepoint, or its transaction), and the group goes on.
    pub async fn rollback(mut self) -> Result<(), DbErr> {
        let own = self.own.take().expect("a turn ends once");
        let undone = own.rollback().await;
        match (self.group.take(), self.shared.take()) {
            (Some(group), Some(g)) => {
                // The others' writes are still to be committed; this writer's
                // outcome is the undo's.
                let _ = finish(group, g).await;
                undone
            }
            _ => undone,
        }
    }

    /// Ends the turn; Ok once this writer's statements are committed.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        let own = self.own.take().expect("a turn ends once");
        let (Some(group), Some(g)) = (self.group.take(), self.shared.take()) else {
            return own.commit().await;
        };
        if let Err(e) = own.commit().await {
            // The savepoint could not be released: the group goes on without it.
            finish_in_background(group, g);
            return Err(e);
        }
        finish(group, g).await
    }
}

/// Leaves the group's transaction open for a queued writer, or commits it; Ok once
/// committed.
async fn finish(group: Arc<Group>, mut g: OwnedMutexGuard<Option<Open>>) -> Result<(), DbErr> {
    let Some(open) = g.as_ref() else {
        return Ok(());
    };
    let queued = group.queued.load(Ordering::SeqCst);
    if queued > 0 && open.members < MAX_GROUP && open.since.elapsed() < MAX_OPEN {
        // A queued writer goes on with the group, and the last one commits it.
        let mut done = open.done.subscribe();
        drop(g);
        return match done.wait_for(Option::is_some).await.map(|v| *v) {
            Ok(Some(true)) => Ok(()),
            _ => Err(DbErr::Custom(
                "the group's transaction was rolled back".into(),
            )),
        };
    }
    let open = g.take().expect("the group is open");
    let committed = open.txn.commit().await;
    let _ = open.done.send(Some(committed.is_ok()));
    committed
}

/// [`finish`] from where nothing can wait for it (a drop, or an error path).
fn finish_in_background(group: Arc<Group>, mut g: OwnedMutexGuard<Option<Open>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Err(e) = finish(group, g).await {
                    tracing::warn!(error = %e, "a write group failed to commit");
                }
            });
        }
        Err(_) => {
            // No runtime to commit on: the group is rolled back (a transaction
            // dropped is), and its members hear it.
            if let Some(open) = g.take() {
                let _ = open.done.send(Some(false));
            }
        }
    }
}

impl Drop for Turn {
    /// A turn dropped unfinished (an error mid-way): its savepoint is rolled back
    /// (a transaction dropped is), and the group goes on without its writes.
    fn drop(&mut self) {
        drop(self.own.take());
        if let (Some(group), Some(g)) = (self.group.take(), self.shared.take()) {
            finish_in_background(group, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::turn;

    /// Writers of several tasks at once: each one's rows are there once its turn's
    /// commit returns; a writer that fails or rolls back loses its own rows and no
    /// one else's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_commit_together_and_writers_undo_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::DatabaseConfig {
            url: format!("sqlite://{}/g.db?mode=rwc", dir.path().display()),
            schema: None,
            max_connections: 10,
            log_statements: false,
        };
        let db = crate::db::connect(&cfg).await.unwrap();
        db.execute_unprepared("CREATE TABLE g (n INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for n in 0..200 {
            let db = db.clone();
            set.spawn(async move {
                let t = turn(&db).await.unwrap();
                t.txn()
                    .execute_raw(Statement::from_string(
                        db.get_database_backend(),
                        format!("INSERT INTO g (n) VALUES ({n})"),
                    ))
                    .await
                    .unwrap();
                t.commit().await.unwrap();
                // Committed: another connection sees it.
                let seen = db
                    .query_one_raw(Statement::from_string(
                        db.get_database_backend(),
                        format!("SELECT n FROM g WHERE n = {n}"),
                    ))
                    .await
                    .unwrap();
                assert!(seen.is_some(), "{n} committed");
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        // A writer that drops its turn unfinished, or rolls it back, loses its own
        // writes, and the group commits the others'.
        let first = turn(&db).await.unwrap();
        first
            .txn()
            .execute_unprepared("INSERT INTO g (n) VALUES (1000)")
            .await
            .unwrap();
        let db2 = db.clone();
        let second = tokio::spawn(async move {
            let insert = async |n: i64| {
                let t = turn(&db2).await.unwrap();
                t.txn()
                    .execute_unprepared(&format!("INSERT INTO g (n) VALUES ({n})"))
                    .await
                    .unwrap();
                t
            };
            drop(insert(1001).await);
            insert(1002).await.rollback().await.unwrap();
            insert(1003).await.commit().await.unwrap();
        });
        // Wait until the second writer is queued, so the first leaves the group open.
        while first
            .group
            .as_ref()
            .unwrap()
            .queued
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
        {
            tokio::task::yield_now().await;
        }
        first.commit().await.unwrap();
        second.await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT n FROM g WHERE n >= 1000 ORDER BY n".to_string(),
            ))
            .await
            .unwrap();
        let kept: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get_by_index(0).unwrap())
            .collect();
        assert_eq!(kept, vec![1000, 1003]);
    }
}
