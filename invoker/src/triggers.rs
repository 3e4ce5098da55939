//! Triggers: what starts a function besides a direct call.
//!
//! - `http`: a public route `/t/{tenant}{path}` (the gateway serves it) whose
//!   requests become API-Gateway-style proxy events, and whose results become HTTP
//!   responses ([`proxy_event`], [`proxy_response`]).
//! - `timer`: a cron pattern with seconds ([`TimerScheduler`]). Every process with a
//!   data path runs a scheduler; each tick fires once in the whole region, because a
//!   firing is a row keyed by (trigger, tick) and only one insert wins.
//!
//! - `storage`: object events in a tenant bucket (the bucket API, or S3 webhooks),
//!   filtered by bucket, action, prefix and suffix ([`fire_storage`]); each match
//!   queues an asynchronous invocation with S3's event-notification shape.
//!
//! - `queue`: a tenant queue's messages ([`QueueConsumers`]), acked once their
//!   invocation succeeded or became a dead letter.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use nimbus_core::bus::DynBus;
use nimbus_core::db::{trigger, trigger_fire};
use nimbus_core::shutdown::Shutdown;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde_json::{Map, Value, json};

use crate::invocations::{NewInvocation, Origin, enqueue};

mod spec;
pub use spec::{Spec, tenant_queue, validate, validate_bucket_name, validate_queue_name};

/// Consumes the tenant queues that have a queue trigger: each message becomes an
/// asynchronous invocation (SQS's event shape), and is acked only when that
/// invocation has succeeded — or failed every retry and become a dead letter, which
/// keeps it. A consumer that dies leaves its messages unacked, and they come back.
pub struct QueueConsumers {
    db: DatabaseConnection,
    bus: DynBus,
}

/// Messages of one queue handled at once, per process.
const QUEUE_PREFETCH: u16 = 8;

impl QueueConsumers {
    /// Consumers over `db` and `bus`.
    pub fn new(db: DatabaseConnection, bus: DynBus) -> Self {
        QueueConsumers { db, bus }
    }

    /// Keeps one consumer per queue trigger (checked every 2 s) until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let me = std::sync::Arc::new(self);
        let mut running: HashMap<(String, String), (String, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        loop {
            match trigger::Entity::find()
                .filter(trigger::Column::Kind.eq("queue"))
                .all(&me.db)
                .await
            {
                Ok(ts) => {
                    let mut want = HashMap::new();
                    for t in ts {
                        let cfg: Value = serde_json::from_str(&t.config).unwrap_or_default();
                        if let Some(q) = cfg["queue"].as_str() {
                            want.insert((t.tenant_id.clone(), q.to_string()), t.function_name);
                        }
                    }
                    running.retain(|k, (f, task)| {
                        let keep = want.get(k) == Some(f);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for (k, f) in want {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            running.entry(k.clone())
                        {
                            let task = tokio::spawn(me.clone().consume(k.0, k.1, f.clone()));
                            slot.insert((f, task));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing queue triggers"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.wait() => break,
            }
        }
        for (_, (_, task)) in running {
            task.abort();
        }
        Ok(())
    }

    async fn consume(
        self: std::sync::Arc<Self>,
        tenant_id: String,
        queue: String,
        function: String,
    ) {
        let name = tenant_queue(&tenant_id, &queue);
        let mut rx = match self.bus.consume(&name, QUEUE_PREFETCH).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, queue = %name, "consuming a tenant queue");
                return;
            }
        };
        let mut handling = tokio::task::JoinSet::new();
        while let Some(d) = rx.recv().await {
            while handling.len() >= QUEUE_PREFETCH as usize {
                handling.join_next().await;
            }
            let (me, tenant_id, queue, function) = (
                self.clone(),
                tenant_id.clone(),
                queue.clone(),
                function.clone(),
            );
            handling.spawn(async move {
                match me.deliver(&tenant_id, &queue, &function, &d.payload).await {
                    Ok(()) => d.ack().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "a queue message; requeued");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        d.nack(true).await;
                    }
                }
            });
        }
    }

    /// Runs one message to its end: success, or a dead letter.
    async fn deliver(
        &self,
        tenant_id: &str,
        queue: &str,
        function: &str,
        payload: &[u8],
    ) -> Result<(), sea_orm::DbErr> {
        let message_id = nimbus_core::new_id();
        let body = String::from_utf8_lossy(payload);
        let event = json!({"Records": [{
            "messageId": message_id,
            "body": body,
            "attributes": {"SentTimestamp": nimbus_core::now_ms().to_string()},
            "eventSource": "nimbus:queue",
            "eventSourceARN": format!("arn:nimbus:queue:{tenant_id}:{queue}"),
        }]});
        let id = enqueue(
            &self.db,
            &self.bus,
            NewInvocation {
                tenant_id,
                function,
                qualifier: None,
                event: Bytes::from(event.to_string()),
                origin: Origin::Queue,
                replay_of: None,
            },
        )
        .await
        // A full backlog: the message waits in its queue and comes back.
        .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
        // Short calls end in tens of ms; retries take minutes: look less often as it
        // goes on.
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
            let state = nimbus_core::db::invocation::Entity::find_by_id(id.clone())
                .one(&self.db)
                .await?
                .map(|i| i.state);
            match state.as_deref() {
                Some("Succeeded" | "Failed" | "DeadLettered") | None => return Ok(()),
                _ => {}
            }
        }
    }
}

/// An object event: what storage triggers fire on.
#[derive(Debug, Clone)]
pub struct ObjectEvent {
    /// The bucket's name.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// "put" or "delete".
    pub action: &'static str,
    /// Bytes (0 for a delete).
    pub size: u64,
    /// The object's entity tag.
    pub etag: String,
    /// When it happened (epoch ms).
    pub at_ms: i64,
    /// Where the event came from ("nimbus:s3", or the webhook's own source).
    pub source: String,
}

/// Queues an invocation for every storage trigger of the tenant that matches the
/// event (bucket, action, prefix, suffix). Returns how many fired. The event has S3's
/// notification shape.
pub async fn fire_storage(
    db: &DatabaseConnection,
    bus: &DynBus,
    region: &str,
    tenant_id: &str,
    ev: &ObjectEvent,
) -> Result<usize, sea_orm::DbErr> {
    let triggers = trigger::Entity::find()
        .filter(trigger::Column::TenantId.eq(tenant_id))
        .filter(trigger::Column::Kind.eq("storage"))
        .all(db)
        .await?;
    let name = match ev.action {
        "put" => "ObjectCreated:Put",
        _ => "ObjectRemoved:Delete",
    };
    let record = json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": ev.source,
        "awsRegion": region,
        "eventTime": nimbus_core::rfc3339(ev.at_ms),
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": ev.bucket},
            "object": {"key": ev.key, "size": ev.size, "eTag": ev.etag},
        },
    }]});
    let mut fired = 0;
    for t in triggers {
        let cfg: Value = serde_json::from_str(&t.config).unwrap_or_default();
        let matches = cfg["bucket"] == ev.bucket.as_str()
            && cfg["events"]
                .as_array()
                .is_some_and(|es| es.iter().any(|e| e == ev.action))
            && ev
                .key
                .starts_with(cfg["prefix"].as_str().unwrap_or_default())
            && ev.key.ends_with(cfg["suffix"].as_str().unwrap_or_default());
        if !matches {
            continue;
        }
        match enqueue(
            db,
            bus,
            NewInvocation {
                tenant_id,
                function: &t.function_name,
                qualifier: None,
                event: Bytes::from(record.to_string()),
                origin: Origin::Storage,
                replay_of: None,
            },
        )
        .await
        {
            Ok(_) => fired += 1,
            Err(super::invocations::EnqueueError::Backlog(limit)) => {
                tracing::warn!(tenant = %tenant_id, function = %t.function_name, limit, "storage event dropped: the tenant's async backlog is full");
            }
            Err(super::invocations::EnqueueError::Db(e)) => return Err(e),
        }
    }
    Ok(fired)
}

/// Parses a cron pattern (5 fields, or 6 with seconds first).
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::new()
        .parse(pattern)
        .map_err(|e| format!("cron '{pattern}' is not valid: {e}"))
}

/// The proxy event of an HTTP request (API Gateway's format).
pub fn proxy_event(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Value {
    let mut hs = Map::new();
    for (k, v) in headers {
        // Repeated headers are joined, as API Gateway does.
        match hs.get_mut(k) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(v);
            }
            _ => {
                hs.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    let mut qs = Map::new();
    for (k, v) in url_pairs(query.unwrap_or_default()) {
        qs.insert(k, Value::String(v));
    }
    let (body, b64) = match std::str::from_utf8(body) {
        Ok(s) => (Value::String(s.to_string()), false),
        Err(_) => {
            use base64::Engine as _;
            (
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                true,
            )
        }
    };
    json!({
        "httpMethod": method,
        "path": path,
        "headers": hs,
        "queryStringParameters": if qs.is_empty() { Value::Null } else { Value::Object(qs) },
        "body": if body == "" { Value::Null } else { body },
        "isBase64Encoded": b64,
    })
}

/// Decodes `%XX` escapes and `+` (a space), as in query strings and S3 event keys;
/// a malformed escape stays as it is.
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `a=1&b=x%20y` (later duplicates win).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// What an http trigger answers.
#[derive(Debug, PartialEq)]
pub struct ProxyResponse {
    /// The status code.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// An HTTP response from a function's result: `{statusCode, headers, body,
/// isBase64Encoded}`, or, for any other result, 200 with the result as JSON.
pub fn proxy_response(result: &[u8]) -> Result<ProxyResponse, String> {
    let v: Value = serde_json::from_slice(result).map_err(|_| "the result is not JSON")?;
    let Some(obj) = v.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(ProxyResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::copy_from_slice(result),
        });
    };
    let status = obj["statusCode"]
        .as_u64()
        .filter(|s| (100..=599).contains(s))
        .ok_or("statusCode must be a number from 100 to 599")? as u16;
    let mut headers = Vec::new();
    if let Some(h) = obj.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.push((k.clone(), v));
        }
    }
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if obj.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            use base64::Engine as _;
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| "body is not valid base64")?,
            )
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok(ProxyResponse {
        status,
        headers,
        body,
    })
}

/// Fires timer triggers.
pub struct TimerScheduler {
    db: DatabaseConnection,
    bus: DynBus,
    /// The last tick this scheduler looked at, per trigger.
    seen: Mutex<HashMap<String, i64>>,
}

/// Ticks older than this are not fired late (after an outage, no storm).
const CATCH_UP_MS: i64 = 5_000;

impl TimerScheduler {
    /// A scheduler over `db`, queueing firings on `bus`.
    pub fn new(db: DatabaseConnection, bus: DynBus) -> Self {
        TimerScheduler {
            db,
            bus,
            seen: Mutex::default(),
        }
    }

    /// Fires every tick up to `now_ms` that no scheduler fired yet. Returns how many
    /// this call fired.
    pub async fn fire_due(&self, now_ms: i64) -> Result<usize, sea_orm::DbErr> {
        Ok(self.fire_due_next(now_ms).await?.0)
    }

    /// [`TimerScheduler::fire_due`], and the next tick of any timer (epoch ms).
    async fn fire_due_next(&self, now_ms: i64) -> Result<(usize, Option<i64>), sea_orm::DbErr> {
        use chrono::TimeZone as _;
        let timers = trigger::Entity::find()
            .filter(trigger::Column::Kind.eq("timer"))
            .all(&self.db)
            .await?;
        let mut fired = 0;
        let mut next_due: Option<i64> = None;
        for t in timers {
            let cfg: Value = serde_json::from_str(&t.config).unwrap_or_default();
            let Ok(cron) = parse_cron(cfg["cron"].as_str().unwrap_or_default()) else {
                continue;
            };
            let from = {
                let mut seen = self.seen.lock().expect("lock");
                let last = seen
                    .get(&t.id)
                    .copied()
                    .unwrap_or(t.created_at.max(now_ms - CATCH_UP_MS));
                seen.insert(t.id.clone(), now_ms);
                last.max(now_ms - CATCH_UP_MS)
            };
            let Some(mut at) = chrono::Utc.timestamp_millis_opt(from).single() else {
                continue;
            };
            while let Ok(next) = cron.find_next_occurrence(&at, false) {
                let tick = next.timestamp_millis();
                if tick > now_ms {
                    next_due = Some(next_due.map_or(tick, |d| d.min(tick)));
                    break;
                }
                at = next;
                if self.fire(&t, tick, now_ms).await? {
                    fired += 1;
                }
            }
        }
        Ok((fired, next_due))
    }

    /// Claims a tick; the winner queues the invocation.
    async fn fire(&self, t: &trigger::Model, tick: i64, now: i64) -> Result<bool, sea_orm::DbErr> {
        let invocation_id = nimbus_core::new_id();
        let claimed = trigger_fire::ActiveModel {
            trigger_id: Set(t.id.clone()),
            tick_ms: Set(tick),
            invocation_id: Set(invocation_id),
            fired_at: Set(now),
        }
        .insert(&self.db)
        .await;
        match claimed {
            Ok(_) => {}
            Err(e) if nimbus_core::db::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        let event = json!({"type": "timer", "trigger_id": t.id,
            "time": nimbus_core::rfc3339(tick), "cron": serde_json::from_str::<Value>(&t.config).unwrap_or_default()["cron"]});
        match enqueue(
            &self.db,
            &self.bus,
            NewInvocation {
                tenant_id: &t.tenant_id,
                function: &t.function_name,
                qualifier: None,
                event: Bytes::from(event.to_string()),
                origin: Origin::Timer,
                replay_of: None,
            },
        )
        .await
        {
            Ok(_) => {}
            Err(super::invocations::EnqueueError::Backlog(limit)) => {
                tracing::warn!(tenant = %t.tenant_id, function = %t.function_name, limit, "timer tick dropped: the tenant's async backlog is full");
            }
            Err(super::invocations::EnqueueError::Db(e)) => return Err(e),
        }
        Ok(true)
    }

    /// Fires on the wall clock until shutdown: wakes at the next tick of any timer
    /// (and at least every 500 ms, to see new timers).
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            let now = nimbus_core::now_ms();
            wait = match self.fire_due_next(now).await {
                Ok((_, Some(next))) => std::time::Duration::from_millis(
                    (next - nimbus_core::now_ms()).clamp(1, 500) as u64,
                ),
                Ok((_, None)) => std::time::Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "firing timers");
                    std::time::Duration::from_millis(500)
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_triggers() {
        let ok = validate(&json!({"type": "http", "path": "/hello/", "methods": ["get", "POST"]}))
            .unwrap();
        assert_eq!(ok.route.as_deref(), Some("/hello"));
        assert_eq!(ok.config["methods"], json!(["GET", "POST"]));
        assert_eq!(ok.config["auth"], "key");
        assert!(validate(&json!({"type": "timer", "cron": "*/5 * * * * *"})).is_ok());
        assert!(validate(&json!({"type": "timer", "cron": "0 12 * * MON"})).is_ok());
        let s =
            validate(&json!({"type": "storage", "bucket": "uploads", "prefix": "img/"})).unwrap();
        assert_eq!(s.config["events"], json!(["put"]));
        for bad in [
            json!({"type": "carrier-pigeon"}),
            json!({"path": "/x"}),
            json!({"type": "timer", "cron": "every day"}),
            json!({"type": "timer", "cron": "61 * * * * *"}),
            json!({"type": "http", "path": "no-slash"}),
            json!({"type": "http", "path": "/a/../b"}),
            json!({"type": "http", "path": "/a", "methods": ["BREW"]}),
            json!({"type": "http", "path": "/a", "auth": "maybe"}),
            json!({"type": "http", "path": "/a", "extra": 1}),
            json!({"type": "queue", "queue": "bad name"}),
            json!({"type": "storage", "bucket": "UP"}),
            json!({"type": "storage", "bucket": "uploads", "events": ["copy"]}),
        ] {
            assert!(validate(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_events_and_responses() {
        let ev = proxy_event(
            "POST",
            "/hello",
            &[("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            Some("q=a%20b&flag&n=1+2"),
            &[0xff, 0x00],
        );
        assert_eq!(ev["headers"]["x-a"], "1,2");
        assert_eq!(
            ev["queryStringParameters"],
            json!({"q": "a b", "flag": "", "n": "1 2"})
        );
        assert_eq!(
            (ev["body"].as_str(), ev["isBase64Encoded"].as_bool()),
            (Some("/wA="), Some(true))
        );
        let r = proxy_response(
            br#"{"statusCode": 201, "headers": {"x-b": "c"}, "body": "aGk=", "isBase64Encoded": true}"#,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.headers, &r.body[..]),
            (201, vec![("x-b".into(), "c".into())], &b"hi"[..])
        );
        let r = proxy_response(br#"{"plain": true}"#).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &br#"{"plain": true}"#[..]));
        assert!(proxy_response(br#"{"statusCode": 99}"#).is_err());
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
    }
}
