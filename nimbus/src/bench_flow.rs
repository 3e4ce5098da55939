//! `nimbus bench flow`: a state machine of N Task states (each a noop function) run
//! end to end, against the same N calls made by hand from the client, one after the
//! other; and the engine's transitions per second with Pass states.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::Client;

/// What to measure.
pub struct FlowBench {
    /// States in the chain.
    pub states: usize,
    /// Executions (and by-hand chains) to time.
    pub count: usize,
    /// Requests at once starting the transitions-per-second run's executions.
    pub concurrency: usize,
}

/// A chain of `n` states of `kind` (a Task on `function`, or a Pass).
fn chain(n: usize, function: Option<&str>) -> Value {
    let mut states = serde_json::Map::new();
    for i in 0..n {
        let mut s = match function {
            Some(f) => json!({"Type": "Task", "Resource": f}),
            None => json!({"Type": "Pass"}),
        };
        if i + 1 == n {
            s["End"] = json!(true);
        } else {
            s["Next"] = json!(format!("S{}", i + 1));
        }
        states.insert(format!("S{i}"), s);
    }
    json!({"StartAt": "S0", "States": states})
}

/// Starts an execution and polls it (every 1 ms) until it stops; the client-side
/// time and the server's own (stopped_at − started_at).
async fn one(c: &Client, machine: &str) -> anyhow::Result<(Duration, i64)> {
    let t = Instant::now();
    let (_, started) = c
        .call(
            Method::POST,
            &format!("/v1/state-machines/{machine}/executions"),
            Some(json!({"input": {"x": 1}})),
        )
        .await?;
    let id = started["execution_id"].as_str().unwrap_or_default();
    loop {
        let (_, e) = c
            .call(Method::GET, &format!("/v1/executions/{id}"), None)
            .await?;
        if e["status"] != "RUNNING" {
            anyhow::ensure!(
                e["status"] == "SUCCEEDED",
                "an execution ended {}",
                e["status"]
            );
            let ms = |k: &str| {
                e[k].as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map_or(0, |d| d.timestamp_millis())
            };
            return Ok((t.elapsed(), ms("stopped_at") - ms("started_at")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(h: &Histogram<u64>) -> Value {
    json!({"p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
           "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
           "max_ms": h.max() as f64 / 1000.0})
}

/// Runs the measurement with a developer key of a tenant (`c`). Makes a noop
/// function and two machines, prefixed `bench-flow-`, and deletes them after.
pub async fn run(c: &Client, opts: FlowBench) -> anyhow::Result<Value> {
    let tag = format!("{:x}", rand::random::<u32>());
    let function = format!("bench-flow-{tag}");
    let zip = code_service::package::build_zip(&[(
        "index.py",
        b"def handler(event, context):\n    return event\n",
    )]);
    use base64::Engine as _;
    let (_, made) = c
        .call(
            Method::POST,
            "/v1/functions",
            Some(json!({"name": function, "runtime": "python3", "handler": "index.handler",
                        "code": {"zip_base64": base64::engine::general_purpose::STANDARD.encode(zip)}})),
        )
        .await?;
    c.wait_task(made["task_id"].as_str().unwrap_or_default(), "creating")
        .await?;
    let tasks = format!("bench-flow-tasks-{tag}");
    let passes = format!("bench-flow-passes-{tag}");
    for (name, def) in [
        (&tasks, chain(opts.states, Some(&function))),
        (&passes, chain(opts.states, None)),
    ] {
        c.call(
            Method::POST,
            "/v1/state-machines",
            Some(json!({"name": name, "definition": def})),
        )
        .await?;
    }
    // Warm: an instance of the function, the machine parsed.
    one(c, &tasks).await?;
    let (mut client_h, mut server_h, mut by_hand) = (
        Histogram::<u64>::new(3)?,
        Histogram::<u64>::new(3)?,
        Histogram::<u64>::new(3)?,
    );
    for _ in 0..opts.count {
        let (client, server) = one(c, &tasks).await?;
        client_h.record(client.as_micros() as u64)?;
        server_h.record(server.max(0) as u64 * 1000)?;
        // The same calls from the client, one after the other.
        let t = Instant::now();
        let mut event = json!({"x": 1});
        for _ in 0..opts.states {
            let (_, out) = c
                .call(
                    Method::POST,
                    &format!("/v1/functions/{function}/invoke"),
                    Some(event),
                )
                .await?;
            event = out;
        }
        by_hand.record(t.elapsed().as_micros() as u64)?;
    }
    // Transitions per second: Pass chains, all started at once (`concurrency`
    // requests at a time), the engine saturated; timed by the executions' own
    // clock, from the first start to the last stop.
    let executions = (opts.count * 4).clamp(opts.concurrency, 1000);
    let c2 = Arc::new(c.clone());
    let mut set = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let (c, machine) = (c2.clone(), passes.clone());
        let n = executions / opts.concurrency + usize::from(w < executions % opts.concurrency);
        set.spawn(async move {
            for _ in 0..n {
                c.call(
                    Method::POST,
                    &format!("/v1/state-machines/{machine}/executions"),
                    Some(json!({"input": {"x": 1}})),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let listed = loop {
        let (_, l) = c
            .call(
                Method::GET,
                &format!("/v1/state-machines/{passes}/executions?limit=1000"),
                None,
            )
            .await?;
        let list = l["executions"].as_array().cloned().unwrap_or_default();
        if list.iter().all(|e| e["status"] != "RUNNING") {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    anyhow::ensure!(
        listed.len() == executions && listed.iter().all(|e| e["status"] == "SUCCEEDED"),
        "not every Pass chain succeeded"
    );
    let at = |e: &Value, k: &str| {
        e[k].as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map_or(0, |d| d.timestamp_millis())
    };
    let first = listed
        .iter()
        .map(|e| at(e, "started_at"))
        .min()
        .unwrap_or(0);
    let last = listed
        .iter()
        .map(|e| at(e, "stopped_at"))
        .max()
        .unwrap_or(0);
    let secs = ((last - first).max(1)) as f64 / 1000.0;
    let transitions = executions * opts.states;
    for m in [&tasks, &passes] {
        c.call(Method::DELETE, &format!("/v1/state-machines/{m}"), None)
            .await?;
    }
    let (_, del) = c
        .call(Method::DELETE, &format!("/v1/functions/{function}"), None)
        .await?;
    c.wait_task(del["task_id"].as_str().unwrap_or_default(), "deleting")
        .await?;
    Ok(json!({
        "states": opts.states,
        "task_chain_execution_client": ms(&client_h),
        "task_chain_execution_server": ms(&server_h),
        "same_calls_by_hand_from_the_client": ms(&by_hand),
        "pass_chain_executions": executions,
        "pass_chain_start_concurrency": opts.concurrency,
        "pass_chain_seconds": secs,
        "transitions_per_second": (transitions as f64 / secs).round(),
    }))
}
