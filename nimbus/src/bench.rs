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
    /// Delete them afterwards.
    pub cleanup: bool,
}

fn summary(h: &Histogram<u64>) -> Value {
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
        let count = opts.count;
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
                let task = loop {
                    let (_, t) = c.call(Method::GET, &format!("/v1/tasks/{id}"), None).await?;
                    if matches!(t["state"].as_str(), Some("Succeeded" | "Failed")) {
                        break t;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
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
        "failed": failed.load(std::sync::atomic::Ordering::SeqCst),
        "tasks_per_sec": ok / wall.as_secs_f64(),
        "client_create_to_active": summary(&client_h),
        "server_task_duration": summary(&*server_h.lock().await),
        "floor_http_roundtrip": summary(&floor),
    }))
}
