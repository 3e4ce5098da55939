//! `nimbus bench create`: control-plane latency, as users measure it.
//!
//! Creates N functions (C at a time) against a running Nimbus and reports, per
//! function, the time from the `POST` to the task's success as the client sees it,
//! and the task's own duration from its server-side timestamps. A bare `GET /healthz`
//! round trip is measured in the same run as the floor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::cli::Client;

/// Options of `nimbus bench create`.
pub struct CreateBench {
    /// Functions to create.
    pub count: usize,
    /// How many at once.
    pub concurrency: usize,
    /// How often a task is polled until it ends; `None` waits for its end in one
    /// request (a long poll).
    pub poll: Option<Duration>,
    /// Delete them afterwards.
    pub cleanup: bool,
}

pub(crate) fn summary(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Runs the benchmark and returns its report.
pub async fn create(c: &Client, opts: CreateBench) -> anyhow::Result<Value> {
    let zip = code_service::package::build_zip(&[(
        "index.py",
        b"def handler(event, context):\n    return event\n",
    )]);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, zip);
    let run = format!("bench{:x}", rand::random::<u32>());
    let client_h = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let server_h = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // The floor: a bare round trip to the same server.
    let mut floor = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        let t = Instant::now();
        c.call(Method::GET, "/healthz", None).await?;
        floor.record(t.elapsed().as_micros() as u64)?;
    }

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (c, b64, run) = (c.clone(), b64.clone(), run.clone());
        let (client_h, server_h, failed, next) = (
            client_h.clone(),
            server_h.clone(),
            failed.clone(),
            next.clone(),
        );
        let (count, poll) = (opts.count, opts.poll);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let t0 = Instant::now();
                let body = json!({"name": format!("{run}-{i}"), "runtime": "python3", "handler": "index.handler", "code": {"zip_base64": b64}});
                let (_, r) = c.call(Method::POST, "/v1/functions", Some(body)).await?;
                let id = r["task_id"].as_str().unwrap_or_default().to_string();
                let path = match poll {
                    Some(_) => format!("/v1/tasks/{id}"),
                    None => format!("/v1/tasks/{id}?wait=20"),
                };
                let task = loop {
                    let (_, t) = c.call(Method::GET, &path, None).await?;
                    if matches!(t["state"].as_str(), Some("Succeeded" | "Failed")) {
                        break t;
                    }
                    if let Some(poll) = poll {
                        tokio::time::sleep(poll).await;
                    }
                };
                if task["state"] != "Succeeded" {
                    failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                client_h.lock().await.record(t0.elapsed().as_micros() as u64)?;
                if let (Some(a), Some(b)) = (
                    task["created_at"].as_str().and_then(rfc3339_ms),
                    task["finished_at"].as_str().and_then(rfc3339_ms),
                ) {
                    server_h.lock().await.record(((b - a).max(0) as u64) * 1000)?;
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let wall = start.elapsed();
    if opts.cleanup {
        for i in 0..opts.count {
            let _ = c
                .call(Method::DELETE, &format!("/v1/functions/{run}-{i}"), None)
                .await;
        }
    }
    let client_h = client_h.lock().await;
    let ok = client_h.len() as f64;
    Ok(json!({
        "benchmark": "create_to_active",
        "url": c.url,
        "functions": opts.count,
        "concurrency": opts.concurrency,
        "poll_ms": opts.poll.map(|p| p.as_millis() as u64),
        "long_poll": opts.poll.is_none(),
        "failed": failed.load(std::sync::atomic::Ordering::SeqCst),
        "tasks_per_sec": ok / wall.as_secs_f64(),
        "client_create_to_active": summary(&client_h),
        "server_task_duration": summary(&*server_h.lock().await),
        "floor_http_roundtrip": summary(&floor),
    }))
}

/// How `bench invoke` and `bench floor` load the target.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Fixed arrival rate (open loop): latency counts from the scheduled send time,
    /// so a slow server cannot hide its queueing (no coordinated omission).
    Rate(u32),
    /// N callers, each sending its next request when the last one answered.
    Concurrency(usize),
}

/// Options of a load run.
pub struct LoadOptions {
    /// The target URLs (POSTed), taken in turn.
    pub urls: Vec<String>,
    /// Bearer token, if any.
    pub token: Option<String>,
    /// The request body.
    pub payload: Vec<u8>,
    /// Open or closed loop.
    pub load: Load,
    /// How long to send.
    pub duration: Duration,
    /// A progress line on stderr.
    pub progress: bool,
    /// Sign each request with AWS Signature V4 (the Lambda-compatible API) instead
    /// of sending the bearer token.
    pub sigv4: Option<SigV4>,
}

/// An AWS access-key pair and region, to sign requests as the AWS SDKs do.
#[derive(Clone)]
pub struct SigV4 {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret: String,
    /// The region to scope signatures to.
    pub region: String,
}

impl SigV4 {
    /// The headers that sign a POST of `body` to `url`, now.
    fn headers(&self, url: &str, body: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        use aws_sigv4::sign::v4;
        let identity = aws_credential_types::Credentials::new(
            &self.access_key_id,
            &self.secret,
            None,
            None,
            "nimbus-bench",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("lambda")
            .time(std::time::SystemTime::now())
            .settings(SigningSettings::default())
            .build()?
            .into();
        let host = reqwest::Url::parse(url)?;
        let host = match host.port() {
            Some(p) => format!("{}:{p}", host.host_str().unwrap_or_default()),
            None => host.host_str().unwrap_or_default().to_string(),
        };
        let headers = [("host", host.as_str())];
        let req = SignableRequest::new(
            "POST",
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )?;
        let (instructions, _) = sign(req, &params)?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

/// What every request of a load run shares.
struct LoadState {
    /// The HTTP client (connections reused).
    http: reqwest::Client,
    /// The targets, taken in turn.
    urls: Vec<String>,
    /// Requests sent, for the turn.
    sent: std::sync::atomic::AtomicUsize,
    /// Bearer token, if any.
    token: Option<String>,
    /// Or a signing key.
    sigv4: Option<SigV4>,
    /// The request body.
    payload: bytes::Bytes,
    /// Latency of successful requests, µs.
    hist: std::sync::Mutex<Histogram<u64>>,
    /// Failed requests by status or kind.
    errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Responses that report a cold start.
    cold: std::sync::atomic::AtomicU64,
    /// Requests finished.
    done: std::sync::atomic::AtomicU64,
}

/// Sends one request and records it; latency counts from `scheduled`.
async fn send_one(s: &LoadState, scheduled: Instant) {
    let turn = s.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = &s.urls[turn % s.urls.len()];
    let mut req = s.http.post(url).body(s.payload.clone());
    if let Some(sig) = &s.sigv4 {
        match sig.headers(url, &s.payload) {
            Ok(headers) => {
                for (k, v) in headers {
                    req = req.header(k, v);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "signing failed");
                return;
            }
        }
    } else if let Some(t) = &s.token {
        req = req.bearer_auth(t);
    }
    let outcome = match req.send().await {
        Ok(r) => {
            let status = r.status();
            if r.headers()
                .get("x-nimbus-cold-start")
                .is_some_and(|v| v == "true")
            {
                s.cold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = r.bytes().await;
            (!status.is_success()).then(|| status.as_u16().to_string())
        }
        Err(e) => Some(if e.is_timeout() { "timeout" } else { "connect" }.to_string()),
    };
    let us = scheduled.elapsed().as_micros() as u64;
    match outcome {
        None => {
            let _ = s.hist.lock().expect("lock").record(us.max(1));
        }
        Some(kind) => *s.errors.lock().expect("lock").entry(kind).or_default() += 1,
    }
    s.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Sends load and reports latency percentiles, throughput and errors.
pub async fn load(opts: LoadOptions) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(60))
        .build()?;
    let shared = Arc::new(LoadState {
        http,
        sent: std::sync::atomic::AtomicUsize::new(0),
        urls: opts.urls.clone(),
        token: opts.token.clone(),
        sigv4: opts.sigv4.clone(),
        payload: bytes::Bytes::from(opts.payload),
        hist: std::sync::Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        errors: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        cold: std::sync::atomic::AtomicU64::new(0),
        done: std::sync::atomic::AtomicU64::new(0),
    });
    let start = Instant::now();
    let end = start + opts.duration;

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(250));
        Some(b)
    } else {
        None
    };
    let ticker = bar.clone().map(|b| {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let n = shared.done.load(std::sync::atomic::Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                b.set_message(format!(
                    "{n} requests, {:.0}/s, {:.0}s",
                    n as f64 / secs,
                    secs
                ));
            }
        })
    });

    match opts.load {
        Load::Concurrency(c) => {
            let mut workers = Vec::new();
            for _ in 0..c.max(1) {
                let shared = shared.clone();
                workers.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        send_one(&shared, Instant::now()).await;
                    }
                }));
            }
            for w in workers {
                w.await?;
            }
        }
        Load::Rate(r) => {
            // Tokio's timers tick in whole milliseconds, which would add up to 1 ms of
            // send lateness to every measurement; a pacing thread sleeps precisely.
            let interval = Duration::from_secs_f64(1.0 / r.max(1) as f64);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let pacer = std::thread::spawn(move || {
                let mut i: u64 = 0;
                loop {
                    let scheduled = start + interval.mul_f64(i as f64);
                    if scheduled >= end {
                        return;
                    }
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    if tx.send(scheduled).is_err() {
                        return;
                    }
                    i += 1;
                }
            });
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(scheduled) = rx.recv().await {
                let shared = shared.clone();
                tasks.spawn(async move { send_one(&shared, scheduled).await });
                while let Some(r) = tasks.try_join_next() {
                    r?;
                }
            }
            let _ = pacer.join();
            while let Some(r) = tasks.join_next().await {
                r?;
            }
        }
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let wall = start.elapsed().as_secs_f64();
    let h = shared.hist.lock().expect("lock");
    let ms = |v: u64| v as f64 / 1000.0;
    Ok(json!({
        "url": opts.urls.first(),
        "targets": opts.urls.len(),
        "mode": match opts.load { Load::Rate(r) => format!("open-loop {r}/s"), Load::Concurrency(c) => format!("closed-loop x{c}") },
        "duration_s": wall,
        "requests": shared.done.load(std::sync::atomic::Ordering::Relaxed),
        "ok": h.len(),
        "errors": *shared.errors.lock().expect("lock"),
        "cold_starts": shared.cold.load(std::sync::atomic::Ordering::Relaxed),
        "throughput_per_s": h.len() as f64 / wall,
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.50)),
            "p90": ms(h.value_at_quantile(0.90)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99.9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
        },
    }))
}

/// A bare loopback HTTP endpoint answering `200 {}`: the floor under any platform.
pub async fn floor_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            "{}",
        )
    });
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/"), h))
}

/// What `bench async` does.
pub struct AsyncBench {
    /// The function.
    pub function: String,
    /// Events to queue.
    pub count: usize,
    /// Senders at once.
    pub concurrency: usize,
}

/// Queues `count` events with `x-nimbus-invocation-type: async`, then waits for all
/// of them: accept latency, drain throughput, and enqueue → start latency (from the
/// invocations' own timestamps).
pub async fn async_drain(c: &Client, opts: AsyncBench) -> anyhow::Result<Value> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(opts.count)));
    let accept = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let path = format!("/v1/functions/{}/invoke", opts.function);
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (c, next, ids, accept, path, count) = (
            c.clone(),
            next.clone(),
            ids.clone(),
            accept.clone(),
            path.clone(),
            opts.count,
        );
        senders.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                let (_, v) = c
                    .call_patiently(
                        reqwest::Method::POST,
                        &path,
                        Some(serde_json::json!({"bench": true})),
                        &[("x-nimbus-invocation-type", "async")],
                    )
                    .await?;
                let _ = accept
                    .lock()
                    .expect("lock")
                    .record(t.elapsed().as_micros().max(1) as u64);
                if let Some(id) = v["invocation_id"].as_str() {
                    ids.lock().expect("lock").push(id.to_string());
                }
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let send_s = started.elapsed().as_secs_f64();
    let ids: Vec<String> = std::mem::take(&mut *ids.lock().expect("lock"));
    // Wait for every event, a few at a time.
    let results = Arc::new(std::sync::Mutex::new(Vec::with_capacity(ids.len())));
    let queue = Arc::new(std::sync::Mutex::new(ids));
    let mut pollers = Vec::new();
    for _ in 0..opts.concurrency.clamp(1, 16) {
        let (c, queue, results) = (c.clone(), queue.clone(), results.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                let Some(id) = queue.lock().expect("lock").pop() else {
                    return anyhow::Ok(());
                };
                loop {
                    let (_, v) = c
                        .call_patiently(
                            reqwest::Method::GET,
                            &format!("/v1/invocations/{id}"),
                            None,
                            &[],
                        )
                        .await?;
                    if matches!(
                        v["state"].as_str(),
                        Some("Succeeded" | "Failed" | "DeadLettered")
                    ) {
                        results.lock().expect("lock").push(v);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for p in pollers {
        p.await??;
    }
    let results = std::mem::take(&mut *results.lock().expect("lock"));
    let ms = |v: &Value, k: &str| v[k].as_str().and_then(nimbus_core::parse_rfc3339);
    let mut to_start = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut to_end = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let (mut first, mut last, mut failed, mut extra) = (i64::MAX, 0i64, 0, 0i64);
    for v in &results {
        let (Some(c0), Some(s0), Some(f0)) = (
            ms(v, "created_at"),
            ms(v, "started_at"),
            ms(v, "finished_at"),
        ) else {
            continue;
        };
        first = first.min(c0);
        last = last.max(f0);
        let _ = to_start.record((s0 - c0).max(1) as u64);
        let _ = to_end.record((f0 - c0).max(1) as u64);
        if v["state"] != "Succeeded" {
            failed += 1;
        }
        extra += (v["attempts"].as_i64().unwrap_or(1) - 1).max(0);
    }
    let accept = accept.lock().expect("lock").clone();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    Ok(serde_json::json!({
        "events": results.len(),
        "failed": failed,
        "extra_attempts": extra,
        "accepted_per_s": results.len() as f64 / send_s,
        "accept_latency_ms": {"p50": q(&accept, 0.5) as f64 / 1000.0, "p99": q(&accept, 0.99) as f64 / 1000.0},
        "drained_per_s": if last > first { results.len() as f64 * 1000.0 / (last - first) as f64 } else { 0.0 },
        "enqueue_to_start_ms": {"p50": q(&to_start, 0.5), "p99": q(&to_start, 0.99), "max": to_start.max()},
        "enqueue_to_finish_ms": {"p50": q(&to_end, 0.5), "p99": q(&to_end, 0.99), "max": to_end.max()},
    }))
}

/// Percentiles (µs) of durations.
fn micros(mut v: Vec<u64>) -> Value {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    json!({"p50_us": at(0.5), "p99_us": at(0.99), "max_us": v[v.len() - 1]})
}

/// The wasm runtime's cold and warm paths, measured in this process with the node's
/// own code: `cold` calls find the module precompiled on disk but not in memory
/// (load + instantiate + run), `warm` calls find it loaded (instantiate + run; every
/// call still gets a fresh instance).
pub async fn wasm(module: &std::path::Path, iterations: usize) -> anyhow::Result<Value> {
    use node::wasm::{Source, WasmCallSpec, WasmOutcome, WasmRuntime};
    let iterations = iterations.max(1);
    let dir = std::env::temp_dir().join(format!("nimbus-bench-wasm-{}", nimbus_core::new_id()));
    let code = dir.join("code");
    std::fs::create_dir_all(&code)?;
    let bytes =
        std::fs::read(module).map_err(|e| anyhow::anyhow!("reading {}: {e}", module.display()))?;
    std::fs::write(code.join("module.wasm"), &bytes)?;
    let rt = std::sync::Arc::new(WasmRuntime::new(dir.join("wasm"))?);
    let sha = "0".repeat(64);
    let call = async || {
        let t = Instant::now();
        // As the node does: a module in memory that reaches no file needs nothing else.
        let source = match rt.ready(&sha, "module.wasm") {
            Some(r) => Source::Ready(r),
            None => Source::Package(&code),
        };
        let c = rt
            .call(WasmCallSpec {
                source,
                code_sha256: &sha,
                handler: "module.wasm",
                env: vec![],
                memory_mb: 128,
                timeout_ms: 10_000,
                event: bytes::Bytes::from_static(br#"{"hello":"wasm"}"#),
            })
            .await;
        (c, t.elapsed().as_micros() as u64)
    };
    let (first, compile_us) = call().await;
    if let WasmOutcome::Error(e) = &first.outcome {
        anyhow::bail!("the module failed: {}", String::from_utf8_lossy(e));
    }
    let (mut cold_init, mut cold_call) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        rt.unload_all();
        let (c, us) = call().await;
        anyhow::ensure!(c.cold, "expected a cold call");
        cold_init.push(c.init_us);
        cold_call.push(us);
    }
    let (mut warm_init, mut warm_call) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let (c, us) = call().await;
        warm_init.push(c.init_us);
        warm_call.push(us);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "module_bytes": bytes.len(),
        "first_call_with_compile_us": compile_us,
        "iterations": iterations,
        "cold": {"init": micros(cold_init), "call": micros(cold_call)},
        "warm": {"init": micros(warm_init), "call": micros(warm_call)},
    }))
}

/// Options of `nimbus bench code-fetch`.
pub struct CodeFetchBench {
    /// Size of each package's one file, bytes (random, so the zip does not shrink it).
    pub size: usize,
    /// Packages fetched per tier.
    pub iterations: usize,
    /// Object storage: `nimbus up`'s local directory when None.
    pub objects: Option<nimbus_core::config::ObjectsConfig>,
}

/// The code tiers a node fetches from, measured in this process with the node's own
/// code cache: a package from object storage, from the zone cache when the zone has it
/// (hit) and when it has to fetch it first (miss), and already on the node. Each
/// fetch includes the digest check and the unpack; every remote fetch is of a package
/// the node does not have (a new, empty node cache each time).
pub async fn code_fetch(opts: CodeFetchBench) -> anyhow::Result<Value> {
    use code_service::zone_cache::{ZoneCache, ZoneClient, digest};
    use node::code_cache::{CodeCache, Tier};
    use rand::Rng as _;
    use std::io::Write as _;
    let n = opts.iterations.max(1);
    let tmp = std::env::temp_dir().join(format!("nimbus-bench-code-{}", nimbus_core::new_id()));
    let objects = opts
        .objects
        .clone()
        .unwrap_or(nimbus_core::config::ObjectsConfig {
            kind: nimbus_core::config::ObjectsKind::Local,
            dir: Some(tmp.join("objects")),
            bucket: None,
            endpoint: None,
            s3_region: "us-east-1".into(),
            access_key: None,
            secret_key: None,
            path_style: true,
        });
    let store = code_service::store::from_config(&objects).await?;
    let mut shas = Vec::with_capacity(n);
    let mut zip_bytes = 0;
    for _ in 0..n {
        let mut body = vec![0u8; opts.size];
        rand::rng().fill(&mut body[..]);
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("blob.bin", zip::write::SimpleFileOptions::default())?;
        w.write_all(&body)?;
        let bytes = bytes::Bytes::from(w.finish()?.into_inner());
        zip_bytes = bytes.len();
        let sha = digest(&bytes);
        store.put(&code_service::package_key(&sha), bytes).await?;
        shas.push(sha);
    }
    let zone = ZoneCache::open(tmp.join("zone"), store.clone(), u64::MAX / 2, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let zone_url = format!("http://{}", listener.local_addr()?);
    let (stop, shutdown) = nimbus_core::shutdown::channel();
    let server = tokio::spawn(code_service::zone_cache::serve(zone, listener, shutdown));
    let node = |i: usize, tag: &str, zone: bool| -> anyhow::Result<CodeCache> {
        let client = if zone {
            Some(ZoneClient::new(&zone_url, None)?)
        } else {
            None
        };
        Ok(CodeCache::new(
            tmp.join(format!("node-{tag}-{i}")),
            store.clone(),
            client,
        ))
    };
    async fn timed(c: &CodeCache, sha: &str, want: Tier) -> anyhow::Result<u64> {
        let t = Instant::now();
        let (_, tier) = c.ensure(sha).await?;
        anyhow::ensure!(
            tier == want,
            "expected {want:?}, the package came from {tier:?}"
        );
        Ok(t.elapsed().as_micros() as u64)
    }
    let (mut object, mut zone_miss, mut zone_hit, mut local) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, sha) in shas.iter().enumerate() {
        object.push(timed(&node(i, "object", false)?, sha, Tier::Object).await?);
        zone_miss.push(timed(&node(i, "miss", true)?, sha, Tier::Zone).await?);
        let hit = node(i, "hit", true)?;
        zone_hit.push(timed(&hit, sha, Tier::Zone).await?);
        local.push(timed(&hit, sha, Tier::Local).await?);
    }
    stop.fire();
    server.await??;
    for sha in &shas {
        store.delete(&code_service::package_key(sha)).await?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(json!({
        "package_bytes": zip_bytes,
        "iterations": n,
        "object_storage": if opts.objects.is_some() { "s3" } else { "local directory" },
        "object": micros(object),
        "zone_miss": micros(zone_miss),
        "zone_hit": micros(zone_hit),
        "local": micros(local),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn load_against_the_floor_counts_every_request() {
        let (url, server) = floor_server().await.unwrap();
        for load_kind in [Load::Concurrency(2), Load::Rate(200)] {
            let r = load(LoadOptions {
                urls: vec![url.clone()],
                token: None,
                payload: b"{}".to_vec(),
                load: load_kind,
                duration: Duration::from_millis(500),
                progress: false,
                sigv4: None,
            })
            .await
            .unwrap();
            let requests = r["requests"].as_u64().unwrap();
            assert!(requests > 10, "{r}");
            assert_eq!(r["ok"].as_u64().unwrap(), requests, "{r}");
            assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
            if let Load::Rate(_) = load_kind {
                assert!(
                    (80..=101).contains(&requests),
                    "open loop sends at the rate: {r}"
                );
            }
        }
        server.abort();
    }
}
