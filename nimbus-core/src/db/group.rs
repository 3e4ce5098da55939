//! Group commit for SQLite's single writer: writers of this process take turns in
//! one open write transaction, and the last of a group commits it for all of them.
//!
//! SQLite has one write lock. Writers that each `BEGIN IMMEDIATE … COMMIT` contend
//! for it through its busy handler (which sleeps up to 100 ms between tries), and
//! each pays a begin and a commit. Here a writer waits for its turn in an async
//! queue, runs its statements in the group's transaction, and then either leaves the
//! transaction open for the writers queued behind it or, when none is queued (or the
//! group is full or has been open long enough), commits it. [`Turn::commit`] returns
//! once the writer's statements are durable with its group's: a writer never goes on
//! before its writes are committed. A writer that fails (an error, or its `Turn`
//! dropped unfinished) rolls the whole group back, and every member hears it.
//!
//! A writer must not write anything it would need to undo alone: a conditional write
//! that finds nothing must come before its other writes, so that it can finish its
//! turn with nothing written. On PostgreSQL (row locks, real concurrency) a turn is a
//! plain transaction of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend, DbErr};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// The most writers in one group.
const MAX_GROUP: usize = 32;
/// The longest a group stays open for writers queued behind it.
const MAX_OPEN: Duration = Duration::from_millis(5);

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
        *g = Some(Open {
            txn: super::begin_write(db).await?,
            members: 0,
            since: Instant::now(),
            done: watch::channel(None).0,
        });
    }
    if let Some(open) = g.as_mut() {
        open.members += 1;
    }
    Ok(Turn {
        group: Some(group),
        shared: Some(g),
        own: None,
    })
}

impl Turn {
    /// The transaction to write in.
    pub fn txn(&self) -> &DatabaseTransaction {
        match (&self.shared, &self.own) {
            (Some(g), _) => &g.as_ref().expect("a turn's group is open").txn,
            (None, Some(own)) => own,
            (None, None) => unreachable!("a turn has a transaction until it ends"),
        }
    }

    /// Ends a turn that wrote nothing, or whose only write failed on its own (a
    /// unique key taken): on PostgreSQL its transaction is rolled back; on SQLite a
    /// failed statement undid itself, and the group goes on.
    pub async fn release(mut self) -> Result<(), DbErr> {
        if let Some(own) = self.own.take() {
            return own.rollback().await;
        }
        self.commit().await
    }

    /// Ends the turn; Ok once this writer's statements are committed.
    pub async fn commit(mut self) -> Result<(), DbErr> {
        if let Some(own) = self.own.take() {
            return own.commit().await;
        }
        let mut g = self.shared.take().expect("a turn ends once");
        let open = g.as_ref().expect("a turn's group is open");
        let queued = self
            .group
            .as_ref()
            .map_or(0, |g| g.queued.load(Ordering::SeqCst));
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
        let open = g.take().expect("a turn's group is open");
        let committed = open.txn.commit().await;
        let _ = open.done.send(Some(committed.is_ok()));
        committed
    }
}

impl Drop for Turn {
    /// A turn dropped unfinished (an error mid-way): the group is rolled back (a
    /// transaction dropped is rolled back) and its members hear it.
    fn drop(&mut self) {
        if let Some(g) = self.shared.as_mut()
            && let Some(open) = g.take()
        {
            let _ = open.done.send(Some(false));
            drop(open.txn);
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::turn;

    /// Writers of several tasks at once: each one's rows are there once its turn's
    /// commit returns; a writer that fails rolls back its group (and only that), and
    /// its members hear of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_commit_together_and_fail_together() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::DatabaseConfig {
            url: format!("sqlite://{}/g.db?mode=rwc", dir.path().display()),
            schema: None,
            max_connections: 10,
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
        // A writer that drops its turn unfinished rolls its group back; a writer that
        // left its writes to that group hears of it.
        let first = turn(&db).await.unwrap();
        first
            .txn()
            .execute_unprepared("INSERT INTO g (n) VALUES (1000)")
            .await
            .unwrap();
        let db2 = db.clone();
        let second = tokio::spawn(async move {
            let t = turn(&db2).await.unwrap();
            t.txn()
                .execute_unprepared("INSERT INTO g (n) VALUES (1001)")
                .await
                .unwrap();
            drop(t);
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
        // The group is left open for queued writers only while it is young
        // (`MAX_OPEN`); on a loaded machine the wait above may outlast that, and the
        // first writer would then rightly commit alone. What is checked here is the
        // rollback, so the group is made young again.
        let mut first = first;
        first.shared.as_mut().unwrap().as_mut().unwrap().since = std::time::Instant::now();
        assert!(first.commit().await.is_err(), "the group was rolled back");
        second.await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT n FROM g WHERE n >= 1000".to_string(),
            ))
            .await
            .unwrap();
        assert!(rows.is_empty());
    }
}
