//! Function output: every stdout and stderr line, with the request it belongs to,
//! stored in the metadata database so any gateway can read it and it outlives the
//! node and the instance.
//!
//! Lines are written in batches by one task per node: a batch is whatever arrives
//! within [`LINGER`] of its first line (or while the previous batch was being
//! written), so a line is readable within about that, and a busy node costs one
//! insert per batch rather than one per call. A function that
//! prints faster than the database takes loses lines (counted, and said so in its
//! log) rather than the node's memory.
//!
//! Fair between tenants: each tenant may send `lines_per_sec` lines a second (with a
//! burst of five seconds' worth) from a node; beyond that its lines are dropped and
//! counted in its own log, so one tenant's flood neither fills the shared queue nor
//! pushes out another tenant's lines. A line is read at most [`MAX_LINE`] bytes at a
//! time ([`read_lines`]): an endless line costs the node that much memory, no more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_core::db::log_line;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::mpsc;

/// Lines waiting to be written, at most.
const QUEUE: usize = 20_000;
/// Lines per insert, at most.
const BATCH: usize = 500;
/// How long a batch waits for more lines after its first, at most: what a line
/// may wait to be readable, against one commit per call under load.
const LINGER: Duration = Duration::from_millis(10);
/// Lines are kept this long.
pub const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// A line longer than this is cut.
pub const MAX_LINE: usize = 16 * 1024;
/// Lines a tenant may send per second from one node, by default.
pub const LINES_PER_SEC: u32 = 1_000;

/// How a call ended, for its `END` and `REPORT` lines.
pub struct CallReport<'a> {
    /// The call's request id.
    pub request_id: &'a str,
    /// How long the handler ran, µs (the whole timeout for a timeout).
    pub duration_us: u64,
    /// The function's memory size, MB.
    pub memory_mb: u32,
    /// The most the instance used, MB, when the node can tell (read only if the
    /// lines are written).
    pub max_memory_used_mb: Option<&'a dyn Fn() -> Option<u64>>,
    /// A cold start's init, ms.
    pub init_ms: Option<u32>,
    /// How it ended.
    pub end: CallEnd<'a>,
}

/// How a call ended.
pub enum CallEnd<'a> {
    /// It answered.
    Ok,
    /// It failed; its error document.
    Error(&'a [u8]),
    /// It ran past its timeout (ms).
    Timeout(u32),
}

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

/// One tenant's allowance of lines (a token bucket).
struct Allowance {
    /// Lines it may send now.
    tokens: f64,
    /// When `tokens` was last topped up.
    at: Instant,
}

/// Lines dropped per (tenant, function), to be said in that function's log.
type Dropped = Arc<Mutex<HashMap<(String, String), u64>>>;

/// Where a node's instances send their output.
pub struct LogSink {
    tx: mpsc::Sender<LogLine>,
    /// Lines dropped (rate or queue), per function.
    dropped: Dropped,
    /// Count of all dropped lines (a quick check for the writer).
    any_dropped: Arc<AtomicU64>,
    /// Each tenant's allowance.
    allowance: Mutex<HashMap<String, Allowance>>,
    /// Lines per second per tenant.
    lines_per_sec: f64,
    /// Whether each call gets its START, END and REPORT lines.
    platform_lines: std::sync::atomic::AtomicBool,
}

impl LogSink {
    /// A sink writing to `db` as `node_id`, with its writer task.
    pub fn start(db: DatabaseConnection, node_id: String) -> Arc<Self> {
        Self::with_rate(db, node_id, LINES_PER_SEC)
    }

    /// A sink that lets each tenant send `lines_per_sec` lines a second.
    pub fn with_rate(db: DatabaseConnection, node_id: String, lines_per_sec: u32) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Dropped::default();
        let any_dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(
            db,
            node_id,
            rx,
            dropped.clone(),
            any_dropped.clone(),
        ));
        Arc::new(LogSink {
            tx,
            dropped,
            any_dropped,
            allowance: Mutex::new(HashMap::new()),
            lines_per_sec: lines_per_sec.max(1) as f64,
            platform_lines: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Turns the platform's START, END and REPORT lines off (or on again).
    pub fn set_platform_lines(&self, on: bool) {
        self.platform_lines.store(on, Ordering::Relaxed);
    }

    /// Whether the tenant may send one more line now.
    fn allowed(&self, tenant: &str) -> bool {
        let now = Instant::now();
        let burst = self.lines_per_sec * 5.0;
        let mut all = self.allowance.lock().expect("lock");
        if all.len() > 10_000 {
            // Forget tenants whose bucket is full again.
            all.retain(|_, a| {
                a.tokens + now.duration_since(a.at).as_secs_f64() * self.lines_per_sec < burst
            });
        }
        let a = all.entry(tenant.to_string()).or_insert(Allowance {
            tokens: burst,
            at: now,
        });
        a.tokens =
            (a.tokens + now.duration_since(a.at).as_secs_f64() * self.lines_per_sec).min(burst);
        a.at = now;
        if a.tokens >= 1.0 {
            a.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn drop_line(&self, line: &LogLine) {
        *self
            .dropped
            .lock()
            .expect("lock")
            .entry((line.tenant_id.clone(), line.function.clone()))
            .or_default() += 1;
        self.any_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether platform lines are on and `tenant_id` may send a line now (its
    /// allowance is not spent), without spending it: platform lines are not even
    /// formatted for a tenant over its rate (they are counted as dropped).
    pub fn has_room(&self, tenant_id: &str, function: &str, lines: u64) -> bool {
        if !self.platform_lines.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        let room = self
            .allowance
            .lock()
            .expect("lock")
            .get(tenant_id)
            .is_none_or(|a| {
                a.tokens + now.duration_since(a.at).as_secs_f64() * self.lines_per_sec >= 1.0
            });
        if !room {
            *self
                .dropped
                .lock()
                .expect("lock")
                .entry((tenant_id.to_string(), function.to_string()))
                .or_default() += lines;
            self.any_dropped.fetch_add(lines, Ordering::Relaxed);
        }
        room
    }

    /// Queues the platform's line that a call starts: `START RequestId: … Version: …`.
    pub fn call_started(&self, tenant_id: &str, function: &str, request_id: &str, version: &str) {
        if !self.has_room(tenant_id, function, 1) {
            return;
        }
        self.platform(
            tenant_id,
            function,
            request_id,
            format!("START RequestId: {request_id} Version: {version}"),
        );
    }

    /// Queues the platform's lines that a call ended, as Lambda prints them: why it
    /// failed (an unhandled error, a timeout, the runtime exiting), `END`, and
    /// `REPORT` with the duration, the billed duration, the memory size and the most
    /// used, and the init duration of a cold start.
    pub fn call_ended(&self, tenant_id: &str, function: &str, r: &CallReport<'_>) {
        if !self.has_room(tenant_id, function, 2) {
            return;
        }
        let id = r.request_id;
        let say = |m: String| self.platform(tenant_id, function, id, m);
        match r.end {
            CallEnd::Ok => {}
            CallEnd::Error(doc) => {
                let v: serde_json::Value = serde_json::from_slice(doc).unwrap_or_default();
                let kind = v["errorType"].as_str().unwrap_or("Error");
                let msg = v["errorMessage"].as_str().unwrap_or("");
                say(format!("[ERROR] {kind}: {msg}"));
            }
            CallEnd::Timeout(ms) => say(format!(
                "RequestId: {id} Task timed out after {:.2} seconds",
                ms as f64 / 1000.0
            )),
        }
        say(format!("END RequestId: {id}"));
        let mut report = format!(
            "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
            r.duration_us as f64 / 1000.0,
            nimbus_core::nodes::billed_ms(r.duration_us, r.init_ms.unwrap_or(0)),
            r.memory_mb
        );
        if let Some(used) = r.max_memory_used_mb.and_then(|f| f()) {
            report.push_str(&format!("\tMax Memory Used: {used} MB"));
        }
        if let Some(init) = r.init_ms {
            report.push_str(&format!("\tInit Duration: {init:.2} ms"));
        }
        say(report);
    }

    fn platform(&self, tenant_id: &str, function: &str, request_id: &str, message: String) {
        self.push(LogLine {
            tenant_id: tenant_id.to_string(),
            function: function.to_string(),
            timestamp_ms: nimbus_core::now_ms(),
            request_id: request_id.to_string(),
            stream: "platform".into(),
            message,
        });
    }

    /// Queues a line; drops it (and counts it) if its tenant is over its rate or the
    /// writer is too far behind.
    pub fn push(&self, mut line: LogLine) {
        if !self.allowed(&line.tenant_id) {
            self.drop_line(&line);
            return;
        }
        if line.message.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.message.is_char_boundary(cut) {
                cut -= 1;
            }
            line.message.truncate(cut);
            line.message.push_str(" [line cut at 16 KiB]");
        }
        if let Err(e) = self.tx.try_send(line) {
            let line = match e {
                mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l) => l,
            };
            self.drop_line(&line);
        }
    }
}

/// Reads `pipe` line by line, handing each (at most [`MAX_LINE`] bytes; a longer one
/// is cut and the rest of it skipped) to `each`, until EOF. Memory stays bounded
/// whatever the function prints.
pub async fn read_lines(pipe: impl tokio::io::AsyncRead + Unpin, mut each: impl FnMut(String)) {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, pipe);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (chunk, ended) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        if chunk.len() > room {
            cut = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = ended.unwrap_or(buf.len());
        reader.consume(used);
        if ended.is_some() {
            each(finish(&mut line, &mut cut));
        }
    }
    if !line.is_empty() || cut {
        each(finish(&mut line, &mut cut));
    }
}

fn finish(line: &mut Vec<u8>, cut: &mut bool) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut s = String::from_utf8_lossy(line).into_owned();
    if std::mem::take(cut) {
        s.push_str(" [line cut at 16 KiB]");
    }
    line.clear();
    s
}

async fn write_loop(
    db: DatabaseConnection,
    node_id: String,
    mut rx: mpsc::Receiver<LogLine>,
    dropped: Dropped,
    any_dropped: Arc<AtomicU64>,
) {
    let mut last_prune = 0i64;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // The lines of the next few ms join this batch: under load, one insert
        // (one commit) carries many calls' lines instead of a call's each.
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(l)) => batch.push(l),
                Ok(None) | Err(_) => break,
            }
        }
        if any_dropped.swap(0, Ordering::Relaxed) > 0 {
            let lost = std::mem::take(&mut *dropped.lock().expect("lock"));
            for ((tenant_id, function), n) in lost {
                batch.push(LogLine {
                    tenant_id,
                    function,
                    timestamp_ms: nimbus_core::now_ms(),
                    request_id: String::new(),
                    stream: "stderr".into(),
                    message: format!(
                        "[nimbus] {n} lines were dropped: the tenant's output came faster than its \
                         log rate, or than it could be stored"
                    ),
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_line_is_cut_and_memory_stays_bounded() {
        // 10 MB without a newline, then two short lines.
        let mut data = vec![b'x'; 10 * 1024 * 1024];
        data.extend_from_slice(b"\nsecond\r\nthird");
        let mut lines = Vec::new();
        read_lines(&data[..], |l| lines.push(l)).await;
        assert_eq!(lines.len(), 3);
        assert!(lines[0].len() < MAX_LINE + 64, "{}", lines[0].len());
        assert!(lines[0].ends_with("[line cut at 16 KiB]"));
        assert_eq!(lines[1], "second");
        assert_eq!(lines[2], "third");
    }

    #[tokio::test]
    async fn a_flooding_tenant_cannot_crowd_out_another() {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let sink = LogSink::with_rate(db, "n".into(), 10);
        let line = |t: &str| LogLine {
            tenant_id: t.into(),
            function: "f".into(),
            timestamp_ms: 0,
            request_id: String::new(),
            stream: "stdout".into(),
            message: "x".into(),
        };
        let mut flood_passed = 0;
        for _ in 0..10_000 {
            if sink.allowed("flood") {
                flood_passed += 1;
            }
        }
        assert_eq!(flood_passed, 50, "five seconds' worth, then nothing");
        assert!(sink.allowed("quiet"), "another tenant still has its own");
        sink.push(line("flood"));
        let dropped = sink.dropped.lock().unwrap().clone();
        assert_eq!(dropped.get(&("flood".into(), "f".into())), Some(&1));
    }
}
