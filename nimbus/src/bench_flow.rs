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
    /// Executions at once for the transitions-per-second run.
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
    // Transitions per second: Pass chains, `concurrency` at once.
    let started = Instant::now();
    let c2 = Arc::new(c.clone());
    let per = (opts.count * 4).max(opts.concurrency);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let (c, machine) = (c2.clone(), passes.clone());
        let n = per / opts.concurrency + usize::from(w < per % opts.concurrency);
        set.spawn(async move {
            for _ in 0..n {
                one(&c, &machine).await?;
            }
            anyhow::Ok(n)
        });
    }
    let mut executions = 0;
    while let Some(r) = set.join_next().await {
        executions += r??;
    }
    let secs = started.elapsed().as_secs_f64();
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
        "pass_chain_concurrency": opts.concurrency,
        "transitions_per_second": (transitions as f64 / secs).round(),
    }))
}
