//! `nimbus replay`: scores keep-alive policies on a trace, offline, with the same
//! predictor code the platform uses ([`keepalive::predictor`]); or, with `--live`, sends
//! the trace's calls to a running Nimbus and counts the cold starts it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{Value, json};

use keepalive::predictor::{self, Policy, TraceFunction};

use crate::cli::Client;

/// Replays the trace in `dir` under each policy; one JSON object per policy
/// (`policy, functions, invocations, cold_starts, cold_start_rate,
/// idle_instance_seconds, idle_mb_seconds`, and `per_function` if asked).
/// Deterministic: the same trace gives the same numbers.
pub fn offline(
    dir: &std::path::Path,
    policies: &[Policy],
    per_function: bool,
) -> anyhow::Result<Value> {
    let functions = predictor::read_trace(dir)?;
    let mut out = Vec::new();
    for &policy in policies {
        let mut total = predictor::Outcome::default();
        let mut each = Vec::new();
        for f in &functions {
            let o = predictor::simulate(f, policy);
            total.invocations += o.invocations;
            total.cold_starts += o.cold_starts;
            total.idle_instance_seconds += o.idle_instance_seconds;
            total.idle_mb_seconds += o.idle_mb_seconds;
            if per_function {
                each.push(json!({"function": f.id, "invocations": o.invocations,
                    "cold_starts": o.cold_starts, "idle_instance_seconds": o.idle_instance_seconds,
                    "idle_mb_seconds": o.idle_mb_seconds}));
            }
        }
        let mut r = json!({
            "policy": policy.to_string(),
            "functions": functions.len(),
            "invocations": total.invocations,
            "cold_starts": total.cold_starts,
            "cold_start_rate": if total.invocations > 0 { total.cold_starts as f64 / total.invocations as f64 } else { 0.0 },
            "idle_instance_seconds": total.idle_instance_seconds,
            "idle_mb_seconds": total.idle_mb_seconds,
        });
        if per_function {
            r["per_function"] = Value::Array(each);
        }
        out.push(r);
    }
    Ok(Value::Array(out))
}

/// Options of `nimbus replay --live`.
pub struct LiveReplay {
    /// The trace directory.
    pub trace: std::path::PathBuf,
    /// Trace time runs this many times faster than real time (calls' durations too).
    pub speedup: f64,
    /// Functions to replay, picked evenly across the trace's range of call counts.
    pub functions: usize,
    /// The first trace minute replayed (0-based).
    pub from_minute: usize,
    /// Trace minutes replayed.
    pub minutes: usize,
    /// Most calls in flight; a call waiting for room is late, and counted.
    pub max_in_flight: usize,
    /// Functions with a minute of more calls than this (in trace time) are left out:
    /// a few functions carry most of a trace's calls, more than one machine can send.
    pub max_per_minute: u32,
    /// Function names start with this.
    pub prefix: String,
    /// Keep the functions afterwards.
    pub keep: bool,
}

/// The trace's functions cut to `[from, from + minutes)`, those with calls in it and
/// no minute above `max_per_minute`, and `n` of them picked evenly from the fewest
/// calls to the most. Deterministic.
pub fn pick(
    functions: Vec<TraceFunction>,
    from: usize,
    minutes: usize,
    max_per_minute: u32,
    n: usize,
) -> Vec<TraceFunction> {
    let mut cut: Vec<TraceFunction> = functions
        .into_iter()
        .map(|mut f| {
            let end = (from + minutes).min(f.per_minute.len());
            f.per_minute = f.per_minute.get(from..end).unwrap_or_default().to_vec();
            f
        })
        .filter(|f| f.per_minute.iter().any(|&c| c > 0))
        .filter(|f| f.per_minute.iter().all(|&c| c <= max_per_minute))
        .collect();
    let calls = |f: &TraceFunction| f.per_minute.iter().map(|&c| c as u64).sum::<u64>();
    cut.sort_by(|a, b| calls(a).cmp(&calls(b)).then_with(|| a.id.cmp(&b.id)));
    if n >= cut.len() {
        return cut;
    }
    (0..n)
        .map(|i| cut[i * (cut.len() - 1) / (n - 1).max(1)].clone())
        .collect()
}

/// The calls of `functions` in trace time, ms from the start, spread evenly within
/// each minute (as the offline replay does), in order: (time, function index).
pub fn schedule(functions: &[TraceFunction]) -> Vec<(i64, usize)> {
    let mut calls = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        for (minute, &n) in f.per_minute.iter().enumerate() {
            for j in 0..n as i64 {
                calls.push((minute as i64 * 60_000 + (j * 60_000 + 30_000) / n as i64, i));
            }
        }
    }
    calls.sort_unstable();
    calls
}

/// The nodes' idle instance-seconds so far, summed, from the server's `/metrics`
/// (None when it does not report them: its nodes are remote).
async fn idle_seconds(c: &Client) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", c.url))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("nimbus_node_idle_instance_seconds_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The noop function every replayed function runs: it sleeps its trace duration
/// (divided by the speedup), given in `SLEEP_MS`.
const SLEEPER: &str = "import os, time\nSLEEP = float(os.environ.get('SLEEP_MS', '0')) / 1000.0\ndef handler(event, context):\n    if SLEEP > 0:\n        time.sleep(SLEEP)\n    return {}\n";

/// Replays a slice of the trace against a running Nimbus: deploys one sleeping noop
/// per picked function, sends each call at its trace time divided by the speedup,
/// and reports the cold starts seen in `x-nimbus-cold-start`, beside the offline
/// replay of the same slice under `policies`.
pub async fn live(c: &Client, opts: LiveReplay, policies: &[Policy]) -> anyhow::Result<Value> {
    anyhow::ensure!(
        opts.speedup >= 1.0 && opts.speedup <= 1000.0,
        "--speedup must be 1..=1000"
    );
    let functions = pick(
        predictor::read_trace(&opts.trace)?,
        opts.from_minute,
        opts.minutes,
        opts.max_per_minute,
        opts.functions.max(1),
    );
    anyhow::ensure!(!functions.is_empty(), "no function has calls in that slice");
    let calls = schedule(&functions);
    let names: Vec<String> = functions
        .iter()
        .map(|f| format!("{}-{}", opts.prefix, &f.id[..f.id.len().min(16)]))
        .collect();
    let zip = code_service::package::build_zip(&[("index.py", SLEEPER.as_bytes())]);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, zip);
    let bar = indicatif::ProgressBar::new(functions.len() as u64);
    bar.set_message("deploying");
    for (f, name) in functions.iter().zip(&names) {
        let sleep_ms = (f.duration_ms as f64 / opts.speedup).round() as i64;
        let env = json!({"SLEEP_MS": sleep_ms.to_string()});
        let created = c
            .call(
                Method::POST,
                "/v1/functions",
                Some(
                    json!({"name": name, "runtime": "python3", "handler": "index.handler",
                    "memory_mb": 128, "timeout_ms": 900_000, "env": env,
                    "code": {"zip_base64": b64}}),
                ),
            )
            .await;
        let task = match created {
            Ok((_, r)) => r["task_id"].as_str().unwrap_or_default().to_string(),
            // Left by an earlier run: set its duration and reuse it.
            Err(e)
                if e.downcast_ref::<crate::cli::ApiError>()
                    .is_some_and(|a| a.status == 409) =>
            {
                let (_, r) = c
                    .call(
                        Method::PATCH,
                        &format!("/v1/functions/{name}"),
                        Some(json!({"env": env})),
                    )
                    .await?;
                r["task_id"].as_str().unwrap_or_default().to_string()
            }
            Err(e) => return Err(e),
        };
        c.wait_task(&task, name).await?;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(900))
        .build()?;
    let cold = Arc::new(AtomicU64::new(0));
    let cold_each: Arc<Vec<AtomicU64>> =
        Arc::new((0..functions.len()).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let mut lateness = Histogram::<u64>::new(3)?;
    let room = Arc::new(tokio::sync::Semaphore::new(opts.max_in_flight.max(1)));
    let progress = indicatif::ProgressBar::new(calls.len() as u64);
    let idle_before = idle_seconds(c).await;
    let start = Instant::now() + Duration::from_millis(500);
    let mut tasks = tokio::task::JoinSet::new();
    for &(t, i) in &calls {
        let due = start + Duration::from_secs_f64(t as f64 / 1000.0 / opts.speedup);
        tokio::time::sleep_until(due.into()).await;
        let permit = room.clone().acquire_owned().await?;
        lateness.record(due.elapsed().as_micros() as u64 + 1)?;
        let req = http
            .post(format!("{}/v1/functions/{}/invoke", c.url, names[i]))
            .bearer_auth(c.token.clone().unwrap_or_default())
            .body("{}");
        let (cold, cold_each, errors, latency, progress) = (
            cold.clone(),
            cold_each.clone(),
            errors.clone(),
            latency.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    if r.headers()
                        .get("x-nimbus-cold-start")
                        .is_some_and(|v| v == "true")
                    {
                        cold.fetch_add(1, Ordering::Relaxed);
                        cold_each[i].fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = r.bytes().await;
                    let _ = latency
                        .lock()
                        .expect("lock")
                        .record(sent.elapsed().as_micros() as u64 + 1);
                }
                Ok(r) => {
                    *errors
                        .lock()
                        .expect("lock")
                        .entry(r.status().as_u16().to_string())
                        .or_default() += 1
                }
                Err(e) => {
                    *errors
                        .lock()
                        .expect("lock")
                        .entry(if e.is_timeout() { "timeout" } else { "connect" }.into())
                        .or_default() += 1
                }
            }
            progress.inc(1);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    progress.finish_and_clear();
    let wall = start.elapsed();
    // In trace time: the node's seconds times the speedup.
    let idle = match (idle_before, idle_seconds(c).await) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) * opts.speedup),
        _ => None,
    };
    if !opts.keep {
        for name in &names {
            let deleted = match c
                .call(Method::DELETE, &format!("/v1/functions/{name}"), None)
                .await
            {
                Ok((_, r)) => {
                    c.wait_task(r["task_id"].as_str().unwrap_or_default(), name)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                tracing::warn!(%name, error = %e, "deleting a replayed function");
            }
        }
    }

    let errors = errors.lock().expect("lock").clone();
    let failed: u64 = errors.values().sum();
    let invocations = calls.len() as u64;
    let cold_starts = cold.load(Ordering::Relaxed);
    let latency = latency.lock().expect("lock");
    let ms = |v: u64| v as f64 / 1000.0;
    let offline: Vec<Value> = policies
        .iter()
        .map(|&p| {
            let (mut n, mut cs, mut idle) = (0u64, 0u64, 0f64);
            for f in &functions {
                // The live calls come over HTTP, not from a timer trigger: the node
                // cannot know a timer's; neither does this replay.
                let f = TraceFunction {
                    trigger: String::new(),
                    ..f.clone()
                };
                let o = predictor::simulate(&f, p);
                n += o.invocations;
                cs += o.cold_starts;
                idle += o.idle_instance_seconds;
            }
            json!({"policy": p.to_string(), "invocations": n, "cold_starts": cs,
                "cold_start_rate": if n > 0 { cs as f64 / n as f64 } else { 0.0 },
                "idle_instance_seconds": idle})
        })
        .collect();
    let per_function: Vec<Value> = functions
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (f, name))| {
            json!({"function": f.id, "name": name,
                "invocations": f.per_minute.iter().map(|&c| c as u64).sum::<u64>(),
                "cold_starts": cold_each[i].load(Ordering::Relaxed)})
        })
        .collect();
    let scaled = |ms: f64| format!("{}ms", (ms / opts.speedup).round().max(1.0));
    Ok(json!({
        "mode": "live",
        "speedup": opts.speedup,
        "functions": functions.len(),
        "trace_minutes": [opts.from_minute, opts.from_minute + opts.minutes],
        "max_per_minute": opts.max_per_minute,
        "invocations": invocations,
        "succeeded": invocations - failed,
        "errors": errors,
        "cold_starts": cold_starts,
        "cold_start_rate": if invocations > 0 { cold_starts as f64 / invocations as f64 } else { 0.0 },
        // All of the node's instances while the replay ran (other functions' too),
        // in trace seconds; null when the server does not report it.
        "idle_instance_seconds": idle,
        "wall_seconds": wall.as_secs_f64(),
        "latency": {"p50_ms": ms(latency.value_at_quantile(0.5)), "p99_ms": ms(latency.value_at_quantile(0.99))},
        "send_lateness": {"p50_ms": ms(lateness.value_at_quantile(0.5)), "p99_ms": ms(lateness.value_at_quantile(0.99)), "max_ms": ms(lateness.max())},
        // The node's clock is not sped up: these settings make its policy see the
        // trace's time.
        "node_settings_for_this_speedup": {
            "NIMBUS_NODE__PREDICTOR_BIN_MS": (10_000.0 / opts.speedup).round().max(100.0) as u64,
            "NIMBUS_NODE__KEEP_ALIVE_MS": (600_000.0 / opts.speedup).round() as u64,
            "NIMBUS_NODE__KEEP_ALIVE_POLICY": format!("hybrid:{}", scaled(predictor::DEFAULT_COLD_START_COST_MS as f64)),
        },
        "offline": offline,
        "per_function": per_function,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: &str, per_minute: &[u32]) -> TraceFunction {
        TraceFunction {
            id: id.into(),
            per_minute: per_minute.to_vec(),
            duration_ms: 100,
            memory_mb: 128.0,
            trigger: String::new(),
        }
    }

    #[test]
    fn live_picks_a_spread_of_functions_and_schedules_their_calls_in_order() {
        let all = vec![
            f("quiet", &[0, 0, 1]),
            f("empty", &[5, 0, 0]),
            f("busy", &[0, 60, 60]),
            f("mid", &[0, 4, 4]),
            f("low", &[0, 2, 0]),
        ];
        // Minutes 1..3: "empty" has no calls there and is dropped.
        let cut = pick(all.clone(), 1, 2, u32::MAX, 10);
        let ids: Vec<&str> = cut.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["quiet", "low", "mid", "busy"]);
        assert_eq!(cut[3].per_minute, [60, 60]);
        // Two of four: the fewest and the most calls.
        let two: Vec<String> = pick(all.clone(), 1, 2, u32::MAX, 2)
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(two, ["quiet", "busy"]);
        // A cap on calls per minute leaves the busy one out.
        let capped: Vec<String> = pick(all, 1, 2, 10, 10).into_iter().map(|f| f.id).collect();
        assert_eq!(capped, ["quiet", "low", "mid"]);
        let s = schedule(&cut);
        assert_eq!(s.len(), 1 + 2 + 8 + 120);
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
        // "low"'s two calls in its minute 0, at 15 s and 45 s.
        let low: Vec<i64> = s.iter().filter(|(_, i)| *i == 1).map(|(t, _)| *t).collect();
        assert_eq!(low, [15_000, 45_000]);
    }

    /// The same trace gives the same report, and the columns are read by name.
    #[test]
    fn replay_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let minutes: Vec<String> = (1..=60).map(|m| m.to_string()).collect();
        let row = |f: &str, every: usize| {
            let counts: Vec<String> = (0..60)
                .map(|m| {
                    if m % every == 0 {
                        "3".into()
                    } else {
                        "0".into()
                    }
                })
                .collect();
            format!("o,a,{f},timer,{}", counts.join(","))
        };
        std::fs::write(
            dir.path().join("invocations.csv"),
            format!(
                "HashOwner,HashApp,HashFunction,Trigger,{}\n{}\n{}\n",
                minutes.join(","),
                row("f1", 5),
                row("f2", 1)
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("durations.csv"),
            "HashOwner,HashApp,HashFunction,Average,Count\no,a,f1,250,10\no,a,f2,40,60\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("memory.csv"),
            "HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb\nf1,o,a,1,200\n",
        )
        .unwrap();
        let policies = [
            Policy::None,
            Policy::Fixed(600_000),
            Policy::Hybrid(predictor::DEFAULT_COLD_START_COST_MS),
        ];
        let a = offline(dir.path(), &policies, true).unwrap();
        let b = offline(dir.path(), &policies, true).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0]["functions"], 2);
        assert_eq!(a[0]["invocations"], 3 * 12 + 3 * 60);
        assert_eq!(a[1]["policy"], "fixed:10m");
        // f1 has its own memory; f2 falls back to 128 MB.
        let f1 = &a[1]["per_function"][0];
        let ratio =
            f1["idle_mb_seconds"].as_f64().unwrap() / f1["idle_instance_seconds"].as_f64().unwrap();
        assert!((ratio - 200.0).abs() < 1e-6, "{f1}");
        assert!(offline(&dir.path().join("missing"), &policies, false).is_err());
    }
}
