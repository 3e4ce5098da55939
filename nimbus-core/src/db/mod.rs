//! The metadata store: sea-orm entities and migrations, the same on SQLite and
//! PostgreSQL. Times are epoch milliseconds (`i64`); JSON documents are stored as text.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Schema};

use crate::config::DatabaseConfig;

pub mod entities;
pub use entities::*;

/// Connects, creating the PostgreSQL schema if configured, and runs the migrations.
pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<DatabaseConnection> {
    use anyhow::Context as _;
    if let Some(schema) = &cfg.schema {
        let admin = Database::connect(cfg.url.as_str())
            .await
            .with_context(|| format!("connecting to {}", redact(&cfg.url)))?;
        admin
            .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .context("creating schema")?;
        admin.close().await.ok();
    }
    let mut opts = ConnectOptions::new(cfg.url.clone());
    opts.max_connections(cfg.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if let Some(schema) = &cfg.schema {
        opts.set_schema_search_path(schema.clone());
    }
    let db = Database::connect(opts)
        .await
        .with_context(|| format!("connecting to {}", redact(&cfg.url)))?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // WAL lets readers go on while the single writer commits; a busy timeout
        // makes concurrent writers wait instead of failing.
        db.execute_unprepared(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=10000; PRAGMA synchronous=NORMAL;",
        )
        .await
        .context("configuring sqlite")?;
    }
    migrate(&db).await.context("running migrations")?;
    Ok(db)
}

/// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: it takes
/// the write lock at once (waiting up to the busy timeout) instead of failing with
/// `SQLITE_BUSY_SNAPSHOT` when it first writes after another writer committed.
/// On PostgreSQL it is a plain `BEGIN`.
pub async fn begin_write(
    db: &DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Hides a password in a connection URL, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Creates every table and index that does not exist yet. Safe to run from several
/// processes at once: each statement is `IF NOT EXISTS`, and a lost race is ignored.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let schema = Schema::new(backend);
    macro_rules! table {
        ($e:expr) => {{
            let mut stmt = schema.create_table_from_entity($e);
            stmt.if_not_exists();
            tolerate_race(db.execute(&stmt).await)?;
            for mut idx in schema.create_index_from_entity($e) {
                idx.if_not_exists();
                tolerate_race(db.execute(&idx).await)?;
            }
        }};
    }
    table!(tenant::Entity);
    table!(api_key::Entity);
    table!(function::Entity);
    table!(version::Entity);
    table!(alias::Entity);
    table!(task::Entity);
    table!(task_step::Entity);
    table!(outbox::Entity);
    table!(step_record::Entity);
    table!(node::Entity);
    table!(reservation::Entity);
    table!(vpc::Entity);
    Ok(())
}

/// Two processes migrating at once may both try to create a table; PostgreSQL then
/// reports a unique violation on its catalog. The table exists either way.
fn tolerate_race(r: Result<sea_orm::ExecResult, sea_orm::DbErr>) -> Result<(), sea_orm::DbErr> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) || e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn migrates_sqlite_twice() {
        let cfg = DatabaseConfig {
            url: "sqlite::memory:".into(),
            schema: None,
            max_connections: 1,
        };
        let db = connect(&cfg).await.unwrap();
        migrate(&db).await.unwrap();
    }
}
