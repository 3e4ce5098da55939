//! Function output: every stdout and stderr line, with the request it belongs to,
//! stored in the metadata database so any gateway can read it and it outlives the
//! node and the instance.
//!
//! Lines are written in batches by one task per node: a batch is whatever arrived
//! while the previous one was being written, so a quiet function's line is stored
//! within one insert, and a chatty one costs one insert per batch. A function that
//! prints faster than the database takes loses lines (counted, and said so in its
//! log) rather than the node's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nimbus_core::db::log_line;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::mpsc;

/// Lines waiting to be written, at most.
const QUEUE: usize = 20_000;
/// Lines per insert, at most.
const BATCH: usize = 500;
/// Lines are kept this long.
pub const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// A line longer than this is cut.
const MAX_LINE: usize = 16 * 1024;

/// One line a function printed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// The tenant's id.
    pub tenant_id: String,
    /// The function's name.
    pub function: String,
    /// Epoch ms.
    pub timestamp_ms: i64,
    /// The request running when it was printed ("" during init).
    pub request_id: String,
    /// "stdout" or "stderr".
    pub stream: String,
    /// The line.
    pub message: String,
}

/// Where a node's instances send their output.
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink writing to `db` as `node_id`, with its writer task.
    pub fn start(db: DatabaseConnection, node_id: String) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(db, node_id, rx, dropped.clone()));
        Arc::new(LogSink { tx, dropped })
    }

    /// Queues a line; drops it (and counts it) if the writer is too far behind.
    pub fn push(&self, mut line: LogLine) {
        if line.message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.message.is_char_boundary(cut) {
                cut -= 1;
            }
            line.message.truncate(cut);
            line.message.push_str(" [line cut at 16 KiB]");
        }
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_loop(
    db: DatabaseConnection,
    node_id: String,
    mut rx: mpsc::Receiver<LogLine>,
    dropped: Arc<AtomicU64>,
) {
    let mut last_prune = 0i64;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let l = batch[batch.len() - 1].clone();
            batch.push(LogLine {
                stream: "stderr".into(),
                request_id: String::new(),
                message: format!(
                    "[nimbus] {lost} lines were dropped: output came faster than it could be stored"
                ),
                ..l
            });
        }
        let rows = batch.drain(..).map(|l| log_line::ActiveModel {
            id: sea_orm::NotSet,
            tenant_id: sea_orm::Set(l.tenant_id),
            function_name: sea_orm::Set(l.function),
            timestamp_ms: sea_orm::Set(l.timestamp_ms),
            request_id: sea_orm::Set(l.request_id),
            stream: sea_orm::Set(l.stream),
            node_id: sea_orm::Set(node_id.clone()),
            message: sea_orm::Set(l.message),
        });
        let rows: Vec<_> = rows.collect();
        let mut tries = 0;
        loop {
            match log_line::Entity::insert_many(rows.clone()).exec(&db).await {
                Ok(_) => break,
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::debug!(error = %e, "storing function logs; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, lines = rows.len(), "function log lines lost");
                    break;
                }
            }
        }
        let now = nimbus_core::now_ms();
        if now - last_prune > 600_000 {
            last_prune = now;
            if let Err(e) = log_line::Entity::delete_many()
                .filter(log_line::Column::TimestampMs.lt(now - RETENTION_MS))
                .exec(&db)
                .await
            {
                tracing::warn!(error = %e, "pruning old function logs");
            }
        }
    }
}

/// A function's lines at or after `since_ms`: the newest `limit`, oldest first.
pub async fn read(
    db: &DatabaseConnection,
    tenant_id: &str,
    function: &str,
    since_ms: i64,
    limit: u64,
) -> Result<Vec<LogLine>, sea_orm::DbErr> {
    let mut rows = log_line::Entity::find()
        .filter(log_line::Column::TenantId.eq(tenant_id))
        .filter(log_line::Column::FunctionName.eq(function))
        .filter(log_line::Column::TimestampMs.gte(since_ms))
        .order_by_desc(log_line::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    rows.reverse();
    Ok(rows
        .into_iter()
        .map(|r| LogLine {
            tenant_id: r.tenant_id,
            function: r.function_name,
            timestamp_ms: r.timestamp_ms,
            request_id: r.request_id,
            stream: r.stream,
            message: r.message,
        })
        .collect())
}
