//! The metadata store: sea-orm entities and migrations, the same on SQLite and
//! PostgreSQL. Times are epoch milliseconds (`i64`); JSON documents are stored as text.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Schema};

use crate::config::DatabaseConfig;

pub mod batch;
mod busy;
pub mod entities;
pub mod flows;
pub mod group;
pub mod usage;
pub use batch::Batch;
pub use entities::*;
pub use flows::*;
pub use usage::{
    DURATION_BOUNDS_US, MB_MS_PER_GB_S, duration_bucket, duration_quantile, function_minute,
    usage_hourly, usage_record, usage_segment,
};

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
        .sqlx_logging(cfg.log_statements);
    if let Some(schema) = &cfg.schema {
        opts.set_schema_search_path(schema.clone());
    }
    if cfg.url.starts_with("sqlite:") {
        // Set on every connection of the pool (a PRAGMA run once reaches only the
        // connection that ran it). A commit is durable when it returns (`FULL`): a
        // 202 promises the task or the event is kept. A writer that finds the write
        // lock taken waits for it up to 10 s, trying every 200 µs (`busy`). A local file does not go stale, so the
        // pool does not ping a connection before handing it out: each ping is a
        // round trip to the connection's worker thread.
        opts.map_sqlx_sqlite_opts(|o| {
            o.synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
        })
        .map_sqlx_sqlite_pool_opts(|p| {
            p.after_connect(|conn, _| Box::pin(async move { busy::install(conn).await }))
        })
        .test_before_acquire(false);
    }
    let db = Database::connect(opts)
        .await
        .with_context(|| format!("connecting to {}", redact(&cfg.url)))?;
    if db.get_database_backend() == DbBackend::Sqlite {
        // WAL lets readers go on while the single writer commits. It is a property
        // of the file, so once is enough.
        db.execute_unprepared("PRAGMA journal_mode=WAL;")
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
            add_missing_columns(db, &schema, $e).await?;
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
    table!(log_line::Entity);
    table!(invocation::Entity);
    table!(trigger::Entity);
    table!(trigger_fire::Entity);
    table!(bucket::Entity);
    table!(tenant_queue::Entity);
    table!(package::Entity);
    table!(region::Entity);
    table!(directory_change::Entity);
    table!(replica_cursor::Entity);
    table!(state_machine::Entity);
    table!(execution::Entity);
    table!(execution_event::Entity);
    table!(execution_run::Entity);
    table!(usage_record::Entity);
    table!(usage_hourly::Entity);
    table!(usage_segment::Entity);
    table!(function_minute::Entity);
    Ok(())
}

/// Adds the columns an entity has and its table lacks (the table was created by an
/// older release). New columns carry a default, so existing rows stay valid.
async fn add_missing_columns<E: sea_orm::EntityTrait>(
    db: &DatabaseConnection,
    schema: &Schema,
    entity: E,
) -> Result<(), sea_orm::DbErr> {
    use sea_orm::sea_query::{Alias, Table};
    use sea_orm::{IdenStatic as _, Iterable as _, Statement};
    let table = entity.table_name();
    let backend = db.get_database_backend();
    let existing: Vec<String> = match backend {
        DbBackend::Sqlite => db
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT name FROM pragma_table_info('{table}')"),
            ))
            .await?
            .iter()
            .filter_map(|r| r.try_get::<String>("", "name").ok())
            .collect(),
        _ => db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                "SELECT column_name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
                [table.into()],
            ))
            .await?
            .iter()
            .filter_map(|r| r.try_get::<String>("", "column_name").ok())
            .collect(),
    };
    for col in E::Column::iter() {
        let name = col.as_str();
        if existing.iter().any(|c| c == name) {
            continue;
        }
        let mut alter = Table::alter();
        alter
            .table(Alias::new(table))
            .add_column(schema.get_column_def::<E>(col));
        tolerate_race(db.execute(&alter).await)?;
        tracing::info!(table, column = name, "added a column");
    }
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
            log_statements: false,
        };
        let db = connect(&cfg).await.unwrap();
        migrate(&db).await.unwrap();
    }

    /// A table from an older release gains the new columns, and its rows keep working.
    #[tokio::test]
    async fn adds_columns_to_old_tables() {
        use sea_orm::EntityTrait as _;
        let db = Database::connect("sqlite::memory:").await.unwrap();
        db.execute_unprepared(
            "CREATE TABLE nodes (id TEXT PRIMARY KEY, address TEXT NOT NULL, region TEXT NOT NULL, \
             zone TEXT NOT NULL, memory_mb BIGINT NOT NULL, slots INTEGER NOT NULL, \
             used_memory_mb BIGINT NOT NULL, used_slots INTEGER NOT NULL, state TEXT NOT NULL, \
             registered_at BIGINT NOT NULL, last_heartbeat BIGINT NOT NULL); \
             INSERT INTO nodes VALUES ('n1', 'a', 'r', 'z', 1, 1, 0, 0, 'Alive', 0, 0);",
        )
        .await
        .unwrap();
        migrate(&db).await.unwrap();
        let n = node::Entity::find_by_id("n1")
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n.warm.as_str(), n.cached_code.as_str()), ("[]", "[]"));
        // Idempotent.
        migrate(&db).await.unwrap();
    }
}
