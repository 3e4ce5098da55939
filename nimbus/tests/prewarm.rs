//! The predictor live on a node: a function called on a steady period is unloaded
//! between calls and pre-warmed just before each, once its idle-time histogram is
//! trusted (`nimbus up`, a python function, real processes).

mod common;

use std::time::{Duration, Instant};

use common::{deploy, invoke, up};
use nimbus::Platform;
use serde_json::json;

#[tokio::test]
async fn a_periodic_function_is_unloaded_between_calls_and_prewarmed() {
    // 200 ms bins, so a 2-second period is learnt in seconds, not minutes.
    let (p, api, _dir) = up(&[
        ("NIMBUS_NODE__KEEP_ALIVE_POLICY", "hybrid"),
        ("NIMBUS_NODE__PREDICTOR_BIN_MS", "200"),
    ])
    .await;
    deploy(
        &api,
        "tick",
        "python3",
        "index.handler",
        &[(
            "index.py",
            "def handler(event, context):\n    return event\n",
        )],
        json!({}),
    )
    .await;

    const PERIOD: Duration = Duration::from_secs(2);
    let start = Instant::now();
    let mut cold = Vec::new();
    let mut unloaded_between = Vec::new();
    for i in 0..11u32 {
        tokio::time::sleep_until((start + PERIOD * i).into()).await;
        let r = invoke(&api, "tick", "", json!({"i": i})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        cold.push(r.h("x-nimbus-cold-start") == Some("true"));
        // Half way to the next call: is the instance still loaded?
        tokio::time::sleep_until((start + PERIOD * i + PERIOD / 2).into()).await;
        unloaded_between.push(p.node.instances() == 0);
    }
    // While it learns (fewer than 5 idle times), the fallback keep-alive holds the
    // instance; once the histogram is trusted, it is unloaded after each call and
    // pre-warmed before the next: the last calls are warm though nothing was loaded
    // in between.
    assert!(cold[0], "{cold:?}");
    assert!(!unloaded_between[1], "{unloaded_between:?}");
    assert!(
        unloaded_between[8..].iter().all(|u| *u),
        "not unloaded between calls: {unloaded_between:?}"
    );
    assert!(
        cold[8..].iter().all(|c| !c),
        "not pre-warmed: cold {cold:?}, unloaded {unloaded_between:?}"
    );
    p.stop().await.unwrap();
}

/// Waits until the node has a spare of each process runtime.
async fn spares_ready(p: &Platform) {
    for _ in 0..200 {
        let ready = p.node.spares_ready();
        if ["python3", "nodejs", "provided"]
            .iter()
            .all(|rt| ready.iter().any(|(r, n)| r == rt && *n > 0))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no spares: {:?}", p.node.spares_ready());
}

#[tokio::test]
async fn spares_become_separate_instances_with_their_own_code_and_env() {
    let (p, api, _dir) = up(&[("NIMBUS_NODE__SPARES", "1")]).await;
    let py = r#"
import os
CALLS = 0
def handler(event, context):
    global CALLS
    CALLS += 1
    return {"greeting": os.environ.get("GREETING"), "calls": CALLS,
            "files": sorted(os.listdir(os.environ["LAMBDA_TASK_ROOT"])),
            "name": context.function_name, "memory": context.memory_limit_in_mb,
            "spare": os.environ.get("NIMBUS_SPARE")}
"#;
    for (name, greeting, memory) in [("a", "hello a", 256), ("b", "hello b", 512)] {
        let extra_file = format!("only_{name}.txt");
        deploy(
            &api,
            name,
            "python3",
            "index.handler",
            &[("index.py", py), (&extra_file, name)],
            json!({"env": {"GREETING": greeting}, "memory_mb": memory}),
        )
        .await;
    }
    deploy(
        &api,
        "js",
        "nodejs",
        "index.handler",
        &[(
            "index.js",
            "let calls = 0; exports.handler = async () => ({greeting: process.env.GREETING, calls: ++calls, spare: process.env.NIMBUS_SPARE || null});",
        )],
        json!({"env": {"GREETING": "hello js"}}),
    )
    .await;

    let mut seen = Vec::new();
    for (name, greeting, memory) in [("a", "hello a", 256), ("b", "hello b", 512)] {
        spares_ready(&p).await;
        let used = p.node.spares_used();
        let r = invoke(&api, name, "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.h("x-nimbus-cold-start"), Some("true"));
        assert_eq!(
            p.node.spares_used(),
            used + 1,
            "the cold start did not use a spare"
        );
        let init_ms: u32 = r.h("x-nimbus-init-ms").unwrap().parse().unwrap();
        seen.push(init_ms);
        // Its own environment, code, name and memory; no state from another function.
        assert_eq!(r.body["greeting"], greeting);
        assert_eq!(r.body["calls"], 1);
        assert_eq!(
            r.body["files"],
            json!(["index.py", format!("only_{name}.txt")])
        );
        assert_eq!(r.body["name"], name);
        assert_eq!(r.body["memory"], memory);
        assert_eq!(r.body["spare"], serde_json::Value::Null);
    }
    // Warm calls go to the same (now specialised) instance.
    let r = invoke(&api, "a", "", json!({})).await;
    assert_eq!(
        (r.h("x-nimbus-cold-start"), r.body["calls"].clone()),
        (Some("false"), json!(2))
    );
    spares_ready(&p).await;
    let used = p.node.spares_used();
    let r = invoke(&api, "js", "", json!({})).await;
    assert_eq!(p.node.spares_used(), used + 1);
    assert_eq!(
        r.body,
        json!({"greeting": "hello js", "calls": 1, "spare": null})
    );
    // `provided`: a sandbox made ahead; its own bootstrap runs once the code is in,
    // with the function's environment.
    let bootstrap = r#"#!/bin/sh
set -eu
API="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime"
while true; do
  HEADERS=$(mktemp)
  curl -sS -D "$HEADERS" "$API/invocation/next" > /dev/null
  ID=$(grep -i '^lambda-runtime-aws-request-id:' "$HEADERS" | cut -d' ' -f2 | tr -d '\r')
  curl -sS -X POST "$API/invocation/$ID/response" -d "{\"greeting\":\"$GREETING\",\"handler\":\"$_HANDLER\",\"name\":\"$AWS_LAMBDA_FUNCTION_NAME\",\"spare\":\"${NIMBUS_SPARE:-}\"}" > /dev/null
  rm -f "$HEADERS"
done
"#;
    deploy(
        &api,
        "sh",
        "provided",
        "my.handler",
        &[("bootstrap", bootstrap)],
        json!({"env": {"GREETING": "hello sh"}}),
    )
    .await;
    spares_ready(&p).await;
    let used = p.node.spares_used();
    let r = invoke(&api, "sh", "", json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(p.node.spares_used(), used + 1, "provided used a spare");
    assert_eq!(
        r.body,
        json!({"greeting": "hello sh", "handler": "my.handler", "name": "sh", "spare": ""})
    );
    seen.push(r.h("x-nimbus-init-ms").unwrap().parse().unwrap());
    let r = invoke(&api, "sh", "", json!({})).await;
    assert_eq!(r.h("x-nimbus-cold-start"), Some("false"));
    eprintln!("cold starts from spares, init ms: {seen:?}");
    p.stop().await.unwrap();
}

/// Polls `f` every 50 ms until it holds, or panics after `secs`.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Instances of a function's `$LATEST` on the node: (idle, busy or starting).
fn pooled(p: &Platform, name: &str) -> (u32, u32) {
    p.node
        .pools()
        .iter()
        .filter(|w| w.key.contains(&format!("/{name}/$LATEST/")))
        .fold((0, 0), |(i, b), w| (i + w.idle, b + w.busy))
}

const PY_PID: &str = "import os\ndef handler(event, context):\n    if event.get('crash'):\n        os._exit(1)\n    return {'pid': os.getpid()}\n";

/// `nimbus up` with a short renewal period (leases of 1.5 s) and a short fixed
/// keep-alive (released instances go within a couple of seconds), and the function
/// `name` (python, [`PY_PID`]) deployed with `extra`.
async fn provisioning(
    name: &str,
    extra: serde_json::Value,
) -> (Platform, common::Api, tempfile::TempDir) {
    let (p, api, dir) = up(&[
        ("NIMBUS_ROUTER__PROVISION_INTERVAL_MS", "500"),
        ("NIMBUS_NODE__KEEP_ALIVE_POLICY", "fixed"),
        ("NIMBUS_NODE__KEEP_ALIVE_MS", "800"),
    ])
    .await;
    deploy(
        &api,
        name,
        "python3",
        "index.handler",
        &[("index.py", PY_PID)],
        extra,
    )
    .await;
    (p, api, dir)
}

#[tokio::test]
async fn provisioned_instances_are_warm_before_any_call_and_replaced_when_they_die() {
    // The in-process node registers itself: capacity can be reserved on it.
    let (p, api, _dir) = provisioning("pc", json!({"provisioned_concurrency": 2})).await;
    eventually(20, "two provisioned instances started", || {
        pooled(&p, "pc") == (2, 0)
    })
    .await;

    // Two calls at once: both warm, on two different instances.
    let (a, b) = tokio::join!(
        invoke(&api, "pc", "", json!({})),
        invoke(&api, "pc", "", json!({}))
    );
    for r in [&a, &b] {
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.h("x-nimbus-cold-start"), Some("false"), "{:?}", r.body);
    }
    // Held past the keep-alive: the floor keeps them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pooled(&p, "pc"), (2, 0));

    // An instance that dies is replaced ahead of the next call.
    let r = invoke(&api, "pc", "", json!({"crash": true})).await;
    assert_eq!(
        r.h("x-nimbus-function-error"),
        Some("Unhandled"),
        "{:?}",
        r.body
    );
    eventually(20, "the dead instance replaced", || {
        pooled(&p, "pc") == (2, 0)
    })
    .await;
    let r = invoke(&api, "pc", "", json!({})).await;
    assert_eq!(r.h("x-nimbus-cold-start"), Some("false"));

    // Provisioned for an alias instead: its version's instances start, $LATEST's go.
    let r = api.post("/v1/functions/pc/versions", json!({})).await;
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    let r = api
        .put("/v1/functions/pc/aliases/live", json!({"version": "1"}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = api
        .patch(
            "/v1/functions/pc",
            json!({"provisioned_qualifier": "no such!"}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = api
        .patch("/v1/functions/pc", json!({"provisioned_qualifier": "live"}))
        .await;
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    let version_1 = || {
        p.node
            .pools()
            .iter()
            .filter(|w| w.key.contains("/pc/1/"))
            .map(|w| w.idle)
            .sum::<u32>()
    };
    eventually(20, "the alias's version provisioned", || version_1() == 2).await;
    eventually(10, "$LATEST's instances released", || {
        pooled(&p, "pc") == (0, 0)
    })
    .await;
    let r = invoke(&api, "pc", "?qualifier=live", json!({})).await;
    assert_eq!(r.h("x-nimbus-cold-start"), Some("false"), "{:?}", r.body);
    assert_eq!(r.h("x-nimbus-executed-version"), Some("1"));

    // Released: the keep-alive policy takes over, and they go.
    let r = api
        .patch("/v1/functions/pc", json!({"provisioned_concurrency": 0}))
        .await;
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    eventually(10, "released instances reaped", || version_1() == 0).await;
    p.stop().await.unwrap();
}

#[tokio::test]
async fn a_scheduled_warmup_holds_instances_while_its_window_is_open() {
    let (p, api, _dir) = provisioning("sw", json!({})).await;
    for (bad, why) in [
        (
            json!([{"cron": "not cron", "instances": 1, "duration_s": 60}]),
            "not valid",
        ),
        (
            json!([{"cron": "* * * * *", "instances": 0, "duration_s": 60}]),
            "instances",
        ),
        (
            json!([{"cron": "* * * * *", "instances": 1, "duration_s": 0}]),
            "duration_s",
        ),
        (json!([{"cron": "* * * * *", "instances": 1}]), "duration_s"),
    ] {
        let r = api
            .patch("/v1/functions/sw", json!({"scheduled_warmups": bad}))
            .await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.to_string().contains(why), "{r:?}");
    }
    assert_eq!(pooled(&p, "sw"), (0, 0));
    // A window that opens every minute and lasts the whole minute: open now.
    let w = json!([{"cron": "* * * * *", "instances": 2, "duration_s": 60}]);
    let r = api
        .patch("/v1/functions/sw", json!({"scheduled_warmups": w}))
        .await;
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    assert_eq!(
        api.get("/v1/functions/sw").await.body["function"]["scheduled_warmups"],
        w
    );
    eventually(20, "two instances warmed by the schedule", || {
        pooled(&p, "sw") == (2, 0)
    })
    .await;
    let r = invoke(&api, "sw", "", json!({})).await;
    assert_eq!(r.h("x-nimbus-cold-start"), Some("false"));
    // Schedule removed: the instances go with the keep-alive.
    let r = api
        .patch("/v1/functions/sw", json!({"scheduled_warmups": []}))
        .await;
    assert_eq!(
        api.wait_task(r.body["task_id"].as_str().unwrap()).await["state"],
        "Succeeded"
    );
    eventually(10, "warmed instances reaped", || pooled(&p, "sw") == (0, 0)).await;
    p.stop().await.unwrap();
}

#[tokio::test]
async fn live_replay_sends_the_trace_and_counts_the_cold_starts_it_sees() {
    let (p, api, dir) = up(&[]).await;
    // Two functions over 3 minutes: one called twice a minute, one 30 times.
    let trace = dir.path().join("trace");
    std::fs::create_dir_all(&trace).unwrap();
    std::fs::write(
        trace.join("invocations.csv"),
        "HashOwner,HashApp,HashFunction,Trigger,1,2,3,4\n\
         o,a,aaaaaaaaaaaaaaaaaaaa,timer,2,2,2,0\n\
         o,a,bbbbbbbbbbbbbbbbbbbb,http,30,30,30,9\n\
         o,a,cccccccccccccccccccc,http,0,0,0,5\n",
    )
    .unwrap();
    std::fs::write(
        trace.join("durations.csv"),
        "HashOwner,HashApp,HashFunction,Average,Count\n\
         o,a,aaaaaaaaaaaaaaaaaaaa,600,6\no,a,bbbbbbbbbbbbbbbbbbbb,60,99\n",
    )
    .unwrap();
    std::fs::write(
        trace.join("memory.csv"),
        "HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb\n",
    )
    .unwrap();
    let client = nimbus::cli::Client::new(p.url.clone(), api.token.clone());
    let report = nimbus::replay::live(
        &client,
        nimbus::replay::LiveReplay {
            trace,
            speedup: 60.0,
            functions: 10,
            from_minute: 0,
            minutes: 3,
            max_in_flight: 64,
            max_per_minute: 1000,
            prefix: "rp".into(),
            keep: false,
        },
        &["none".parse().unwrap(), "fixed:10m".parse().unwrap()],
    )
    .await
    .unwrap();
    // The third function has no calls in those minutes: not replayed.
    assert_eq!(report["functions"], 2, "{report}");
    assert_eq!(report["invocations"], 96, "{report}");
    assert_eq!(report["succeeded"], 96, "{report}");
    // Each function starts cold once at least; most calls are warm.
    let cold = report["cold_starts"].as_u64().unwrap();
    assert!((2..48).contains(&cold), "{report}");
    let per: u64 = report["per_function"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["cold_starts"].as_u64().unwrap())
        .sum();
    assert_eq!(per, cold);
    assert_eq!(
        report["offline"][0]["cold_starts"], 96,
        "none: every call cold"
    );
    assert_eq!(report["offline"][1]["invocations"], 96);
    // Three trace minutes at 60× take about three seconds.
    let wall = report["wall_seconds"].as_f64().unwrap();
    assert!((2.5..30.0).contains(&wall), "{report}");
    // The node's idle time, from /metrics, in trace seconds: two functions' instances
    // kept loaded between calls (the predictor is still learning: 10-minute fallback).
    let idle = report["idle_instance_seconds"].as_f64().unwrap();
    assert!(idle > 60.0, "{report}");
    let metrics = common::metrics_text(&p.url).await;
    // Summed over the node's series (cold starts are by runtime too).
    let counter = |name: &str| -> u64 {
        let samples: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{node=\"local\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!samples.is_empty(), "{name} missing:\n{metrics}");
        samples.iter().sum()
    };
    assert!(counter("nimbus_node_cold_starts_total") >= cold);
    assert!(counter("nimbus_node_warm_starts_total") >= 96 - cold);
    // Its functions are gone afterwards.
    let fs = api.get("/v1/functions").await.body["functions"].clone();
    assert_eq!(fs.as_array().map(Vec::len), Some(0), "{fs}");
    p.stop().await.unwrap();
}
