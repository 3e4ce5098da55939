//! Writes gathered and sent together: on SQLite, one round trip for all of them.
//!
//! sqlx runs every SQLite connection on a thread of its own, so each statement is a
//! hand-off to that thread and back: two thread wake-ups, often across cores. A
//! writer that holds SQLite's single write lock pays them for every statement, and
//! every other writer waits meanwhile. Writes whose results nothing reads (no
//! `RETURNING`, no later read of the same rows before the batch runs) can instead
//! go as one text of several statements: sqlx prepares and steps them in order on
//! the connection's thread, binding the arguments of each in turn. On PostgreSQL the
//! statements run one by one (its extended protocol takes one statement per
//! message), in the same order.

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryTrait, Statement, Value,
};

/// Statements to run later, in order, in one transaction.
#[derive(Debug)]
pub struct Batch {
    backend: DbBackend,
    statements: Vec<Statement>,
}

impl Batch {
    /// An empty batch for `backend`.
    pub fn new(backend: DbBackend) -> Self {
        Batch {
            backend,
            statements: Vec::new(),
        }
    }

    /// The database the statements are built for.
    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    /// Adds a statement.
    pub fn push(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// Adds the insert of `row`.
    pub fn insert<A: ActiveModelTrait>(&mut self, row: A) {
        let s = <A::Entity as EntityTrait>::insert(row).build(self.backend);
        self.push(s);
    }

    /// Adds the update of the row `row`'s primary key names: its columns that are
    /// set are written, the others left as they are.
    pub fn update<A: ActiveModelTrait>(&mut self, row: A) -> Result<(), DbErr> {
        let s = <A::Entity as EntityTrait>::update(row)
            .validate()?
            .build(self.backend);
        self.push(s);
        Ok(())
    }

    /// Statements waiting.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// [`run`](Self::run), all or nothing, in a transaction that holds other writers'
    /// statements too: on SQLite, several statements go inside a savepoint set and
    /// released in the same text, and one that fails undoes those before it (a
    /// single statement that fails undoes only itself).
    pub async fn run_alone(&mut self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
        if self.backend != DbBackend::Sqlite || self.statements.len() < 2 {
            return self.run(db).await;
        }
        self.statements.insert(
            0,
            Statement::from_string(DbBackend::Sqlite, "SAVEPOINT batch"),
        );
        self.statements
            .push(Statement::from_string(DbBackend::Sqlite, "RELEASE batch"));
        let ran = self.run(db).await;
        if ran.is_err() {
            // Stopped inside the savepoint: undo what ran, and leave it. If SQLite
            // undid the whole transaction itself (a full disk), there is no
            // savepoint left, and the group's commit reports the failure.
            let _ = db
                .execute_unprepared("ROLLBACK TO batch; RELEASE batch")
                .await;
        }
        ran
    }

    /// Runs the statements waiting, in order, on `db` (a transaction, so that they
    /// stand or fall together), and empties the batch. On an error, the statements
    /// before the failing one have run: the caller's transaction is to be undone.
    pub async fn run(&mut self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
        let statements = std::mem::take(&mut self.statements);
        if self.backend != DbBackend::Sqlite || statements.len() < 2 {
            for s in statements {
                db.execute_raw(s).await?;
            }
            return Ok(());
        }
        let mut sql = String::new();
        let mut values: Vec<Value> = Vec::new();
        for s in statements {
            sql.push_str(&s.sql);
            sql.push_str(";\n");
            if let Some(v) = s.values {
                values.extend(v.0);
            }
        }
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{EntityTrait, Set, TransactionTrait};

    use super::Batch;
    use crate::db::outbox;

    fn row(id: &str, not_before: i64) -> outbox::ActiveModel {
        outbox::ActiveModel {
            id: Set(id.into()),
            destination: Set(format!("q-{id}")),
            payload: Set(vec![0, 1, 2, b'?', 0xff]),
            not_before: Set(not_before),
            created_at: Set(7),
            traceparent: Set(None),
        }
    }

    /// Inserts and updates sent as one text each land with their own arguments,
    /// in order; a failing statement fails the run.
    #[tokio::test]
    async fn statements_run_in_order_with_their_own_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::connect(&crate::config::DatabaseConfig {
            url: format!("sqlite://{}/b.db?mode=rwc", dir.path().display()),
            schema: None,
            max_connections: 2,
            log_statements: false,
        })
        .await
        .unwrap();
        let mut b = Batch::new(db.get_database_backend());
        b.insert(row("a", 1));
        b.insert(row("b", 2));
        // Updates a row inserted earlier in the same batch.
        b.update(outbox::ActiveModel {
            id: Set("a".into()),
            not_before: Set(10),
            traceparent: Set(Some("00-x".into())),
            ..Default::default()
        })
        .unwrap();
        b.insert(row("c", 3));
        assert_eq!(b.len(), 4);
        let txn = db.begin().await.unwrap();
        b.run(&txn).await.unwrap();
        assert!(b.is_empty());
        txn.commit().await.unwrap();
        let mut rows = outbox::Entity::find().all(&db).await.unwrap();
        rows.sort_by(|x, y| x.id.cmp(&y.id));
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    r.destination.as_str(),
                    r.not_before,
                    r.traceparent.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "q-a", 10, Some("00-x")),
                ("b", "q-b", 2, None),
                ("c", "q-c", 3, None)
            ]
        );
        assert!(rows.iter().all(|r| r.payload == vec![0, 1, 2, b'?', 0xff]));
        // A duplicate key in the middle: the run fails, and the transaction undone
        // keeps nothing of it.
        b.insert(row("d", 4));
        b.insert(row("a", 5));
        b.insert(row("e", 6));
        let txn = db.begin().await.unwrap();
        assert!(b.run(&txn).await.is_err());
        txn.rollback().await.unwrap();
        assert_eq!(outbox::Entity::find().all(&db).await.unwrap().len(), 3);
    }
}
