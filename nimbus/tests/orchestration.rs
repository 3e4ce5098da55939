//! State machines in Amazon States Language, end to end on `nimbus up`: every state
//! type, Retry and Catch, Parallel and Map (never more items running than
//! MaxConcurrency), path processing, the API's errors, and an execution that survives
//! the platform's restart in the middle of a Wait.

mod common;

use std::time::{Duration, Instant};

use common::{Api, deploy};
use serde_json::{Value, json};

/// One python function for every test: it echoes, adds, fails with a named error,
/// or sleeps, as the event says.
const HANDLER: &str = r#"
import time

class MyError(Exception):
    pass

def handler(event, context):
    if not isinstance(event, dict):
        return event
    if event.get("fail"):
        raise MyError("asked to fail: " + str(event.get("fail")))
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if "a" in event and "b" in event:
        return {"sum": event["a"] + event["b"]}
    if "n" in event:
        return event["n"] * 2
    return event
"#;

async fn machine(api: &Api, name: &str, definition: Value) {
    let r = api
        .post(
            "/v1/state-machines",
            json!({"name": name, "definition": definition}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
}

async fn start(api: &Api, machine: &str, input: Value) -> String {
    let r = api
        .post(
            &format!("/v1/state-machines/{machine}/executions"),
            json!({ "input": input }),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    r.body["execution_id"].as_str().unwrap().to_string()
}

/// Waits until the execution stops; returns it.
async fn finished(api: &Api, id: &str, secs: u64) -> Value {
    let t = Instant::now();
    loop {
        let r = api.get(&format!("/v1/executions/{id}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        if r.body["status"] != "RUNNING" {
            return r.body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "execution {id} still running: {}",
            api.get(&format!("/v1/executions/{id}/history")).await.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn history(api: &Api, id: &str) -> Vec<Value> {
    api.get(&format!("/v1/executions/{id}/history")).await.body["events"]
        .as_array()
        .unwrap()
        .clone()
}

/// `nimbus up` on the data in `dir` (kept across restarts).
async fn start_on(dir: &std::path::Path) -> nimbus::Platform {
    nimbus::Platform::start(nimbus::UpOptions {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: None,
        overrides: vec![],
    })
    .await
    .unwrap()
}

/// The tenant `acme` on `p`, its limits lifted (the tests poll often): its owner's
/// API, and its key (to reach the platform again after a restart).
async fn acme(p: &nimbus::Platform) -> (Api, String) {
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let key = admin.tenant("acme").await;
    admin.lift_limits("acme").await;
    (admin.with_token(&key), key)
}

/// Waits until the execution has entered `state`.
async fn until_entered(api: &Api, id: &str, state: &str) {
    let t = Instant::now();
    while !history(api, id)
        .await
        .iter()
        .any(|ev| ev["type"] == "StateEntered" && ev["state"] == state)
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never entered {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls a running Map's execution until it stops (within `secs`); the most items
/// that were running at once.
async fn most_items_at_once(api: &Api, p: &nimbus::Platform, id: &str, secs: u64) -> u64 {
    use nimbus_core::db::execution_run;
    use sea_orm::{ColumnTrait as _, EntityTrait as _, PaginatorTrait as _, QueryFilter as _};
    let db = nimbus_core::db::connect(&p.config.database).await.unwrap();
    let mut most = 0;
    let t = Instant::now();
    loop {
        let running = execution_run::Entity::find()
            .filter(execution_run::Column::ExecutionId.eq(id))
            .filter(execution_run::Column::Parent.is_not_null())
            .filter(execution_run::Column::Status.eq("ready"))
            .count(&db)
            .await
            .unwrap();
        most = most.max(running);
        if api.get(&format!("/v1/executions/{id}")).await.body["status"] != "RUNNING" {
            return most;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "the map did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(api: &Api, name: &str, definition: Value, input: Value) -> Value {
    machine(api, name, definition).await;
    let id = start(api, name, input).await;
    finished(api, &id, 30).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_paths_retry_catch_parallel_and_map() {
    let (p, api, _dir) = common::up(&[]).await;
    deploy(
        &api,
        "fn",
        "python3",
        "index.handler",
        &[("index.py", HANDLER)],
        json!({}),
    )
    .await;

    // --- A sequence: Pass with Parameters and intrinsics, Task with paths, Choice,
    // Succeed; the history has every transition with its input and output.
    let e = run(
        &api,
        "seq",
        json!({
            "StartAt": "Prepare",
            "States": {
                "Prepare": {"Type": "Pass",
                    "Parameters": {"a.$": "$.x", "b": 10, "msg.$": "States.Format('x is {}', $.x)"},
                    "ResultPath": "$.prepared", "Next": "Add"},
                "Add": {"Type": "Task", "Resource": "fn", "InputPath": "$.prepared",
                    "ResultSelector": {"total.$": "$.sum"}, "ResultPath": "$.result", "Next": "Big?"},
                "Big?": {"Type": "Choice", "Choices": [
                    {"Variable": "$.result.total", "NumericGreaterThan": 100, "Next": "Big"}],
                    "Default": "Small"},
                "Big": {"Type": "Succeed"},
                "Small": {"Type": "Pass", "Result": "small", "ResultPath": "$.size",
                    "OutputPath": "$['size','result']", "End": true}
            }
        }),
        json!({"x": 5}),
    )
    .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!(["small", {"total": 15}]), "{e}");
    let h = history(&api, e["execution_id"].as_str().unwrap()).await;
    let kinds: Vec<&str> = h.iter().map(|ev| ev["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"ExecutionStarted"));
    assert_eq!(kinds.last(), Some(&"ExecutionSucceeded"));
    let entered: Vec<&str> = h
        .iter()
        .filter(|ev| ev["type"] == "StateEntered")
        .map(|ev| ev["state"].as_str().unwrap())
        .collect();
    assert_eq!(entered, ["Prepare", "Add", "Big?", "Small"]);
    assert!(
        h.windows(2)
            .all(|w| w[1]["id"].as_i64() == Some(w[0]["id"].as_i64().unwrap() + 1))
    );
    assert!(h.iter().all(|ev| ev["timestamp"].as_str().is_some()));

    // --- Retry and Catch: a named error retried MaxAttempts times, then caught
    // (the error in ResultPath); an unmatched retrier does not retry; an uncaught
    // error fails the execution with the function's errorType.
    let e = run(
        &api,
        "retry-catch",
        json!({
            "StartAt": "Boom",
            "States": {
                "Boom": {"Type": "Task", "Resource": "fn",
                    "Retry": [{"ErrorEquals": ["Other"], "MaxAttempts": 5, "IntervalSeconds": 0},
                              {"ErrorEquals": ["MyError"], "MaxAttempts": 2, "IntervalSeconds": 0,
                               "BackoffRate": 1}],
                    "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.err", "Next": "Handled"}],
                    "End": true},
                "Handled": {"Type": "Pass", "End": true}
            }
        }),
        json!({"fail": "please"}),
    )
    .await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"]["err"]["Error"], "MyError", "{e}");
    assert!(
        e["output"]["err"]["Cause"]
            .as_str()
            .unwrap()
            .contains("asked to fail")
    );
    let h = history(&api, e["execution_id"].as_str().unwrap()).await;
    assert_eq!(
        h.iter().filter(|ev| ev["type"] == "StateRetry").count(),
        2,
        "{h:?}"
    );
    let e = run(
        &api,
        "uncaught",
        json!({"StartAt": "Boom", "States": {
            "Boom": {"Type": "Task", "Resource": "fn", "End": true,
                     "Catch": [{"ErrorEquals": ["NotThisOne"], "Next": "Never"}]},
            "Never": {"Type": "Succeed"}}}),
        json!({"fail": 1}),
    )
    .await;
    assert_eq!(e["status"], "FAILED", "{e}");
    assert_eq!(e["error"], "MyError");
    // TimeoutSeconds: States.Timeout, which States.TaskFailed does not catch.
    let e = run(
        &api,
        "timeout",
        json!({"StartAt": "Slow", "States": {
            "Slow": {"Type": "Task", "Resource": "fn", "TimeoutSeconds": 1, "End": true,
                     "Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next": "Never"},
                               {"ErrorEquals": ["States.Timeout"], "Next": "TimedOut"}]},
            "Never": {"Type": "Fail", "Error": "Wrong"},
            "TimedOut": {"Type": "Pass", "Result": "timed out", "End": true}}}),
        json!({"sleep": 3}),
    )
    .await;
    assert_eq!(e["output"], "timed out", "{e}");
    // Fail: its Error and Cause.
    let e = run(
        &api,
        "fail",
        json!({"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Custom.Error", "Cause": "because"}}}),
        json!({}),
    )
    .await;
    assert_eq!(
        (
            e["status"].as_str(),
            e["error"].as_str(),
            e["cause"].as_str()
        ),
        (Some("FAILED"), Some("Custom.Error"), Some("because"))
    );

    // --- Parallel: branch outputs in order; one failing branch fails the state,
    // and its Catch takes over.
    let e = run(
        &api,
        "parallel",
        json!({"StartAt": "Both", "States": {
            "Both": {"Type": "Parallel", "Next": "Done", "Branches": [
                {"StartAt": "Double", "States": {"Double": {"Type": "Task", "Resource": "fn",
                    "Parameters": {"n.$": "$.n"}, "End": true}}},
                {"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "End": true}}}]},
            "Done": {"Type": "Succeed"}}}),
        json!({"n": 21}),
    )
    .await;
    assert_eq!(e["output"], json!([42, {"n": 21}]), "{e}");
    let e = run(
        &api,
        "parallel-fails",
        json!({"StartAt": "Both", "States": {
            "Both": {"Type": "Parallel", "End": true,
                "Catch": [{"ErrorEquals": ["MyError"], "Next": "Caught"}],
                "Branches": [
                    {"StartAt": "Bad", "States": {"Bad": {"Type": "Task", "Resource": "fn", "End": true}}},
                    {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 30, "End": true}}}]},
            "Caught": {"Type": "Pass", "Result": "caught", "End": true}}}),
        json!({"fail": "branch"}),
    )
    .await;
    assert_eq!(
        e["output"], "caught",
        "the failure stops the other branch: {e}"
    );

    // --- Map: 20 items, at most 3 at once, results in order; ItemSelector with the
    // item and its index.
    machine(
        &api,
        "map",
        json!({"StartAt": "Each", "States": {
            "Each": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 3,
                "ItemSelector": {"n.$": "$$.Map.Item.Value", "i.$": "$$.Map.Item.Index"},
                "ItemProcessor": {"StartAt": "Double", "States": {
                    "Double": {"Type": "Task", "Resource": "fn", "InputPath": "$", "Parameters": {"n.$": "$.n"},
                               "ResultPath": "$.doubled", "End": true}}},
                "End": true}}}),
    )
    .await;
    let items: Vec<i64> = (1..=20).collect();
    let id = start(&api, "map", json!({"items": items})).await;
    let most = most_items_at_once(&api, &p, &id, 30).await;
    assert!(
        (1..=3).contains(&most),
        "{most} items ran at once; MaxConcurrency is 3"
    );
    let e = finished(&api, &id, 1).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let out = e["output"].as_array().unwrap();
    assert_eq!(out.len(), 20);
    assert_eq!(out[0], json!({"n": 1, "i": 0, "doubled": 2}));
    assert_eq!(out[19], json!({"n": 20, "i": 19, "doubled": 40}));

    // --- Step Functions' own Lambda integration resource runs unchanged.
    let e = run(
        &api,
        "sfn-style",
        json!({"StartAt": "Invoke", "States": {"Invoke": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": {"FunctionName": "fn", "Payload": {"a": 1, "b.$": "$.b"}},
            "OutputPath": "$.Payload", "End": true}}}),
        json!({"b": 2}),
    )
    .await;
    assert_eq!(e["output"], json!({"sum": 3}), "{e}");
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_checks_definitions_names_and_states() {
    let (p, api, dir) = common::up(&[]).await;
    // A refused definition is a 400 that names the state.
    let r = api
        .post(
            "/v1/state-machines",
            json!({"name": "bad", "definition": {"StartAt": "A", "States": {
                "A": {"Type": "Pass", "Next": "Nowhere"}}}}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("'A'"),
        "{r:?}"
    );
    machine(
        &api,
        "slow",
        json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 60, "End": true}}}),
    )
    .await;
    let r = api
        .post(
            "/v1/state-machines",
            json!({"name": "slow", "definition": {"StartAt": "W",
            "States": {"W": {"Type": "Succeed"}}}}),
        )
        .await;
    assert_eq!(r.status, 409);
    // A named start is idempotent; another input under that name is a conflict.
    let start_named = |input: Value| {
        let api = api.clone();
        async move {
            api.post(
                "/v1/state-machines/slow/executions",
                json!({"input": input, "name": "only-once"}),
            )
            .await
        }
    };
    let a = start_named(json!({"k": 1})).await;
    let b = start_named(json!({"k": 1})).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.body["execution_id"], b.body["execution_id"]);
    assert_eq!(start_named(json!({"k": 2})).await.status, 409);
    let id = a.body["execution_id"].as_str().unwrap();
    let running = api
        .get("/v1/state-machines/slow/executions?status=RUNNING")
        .await;
    assert_eq!(running.body["executions"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.get("/v1/state-machines/slow/executions?status=NOPE")
            .await
            .status,
        400
    );
    // Stop: ABORTED, and its history says so.
    let r = api
        .post(&format!("/v1/executions/{id}/stop"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "ABORTED");
    let h = history(&api, id).await;
    assert_eq!(h.last().unwrap()["type"], "ExecutionAborted");
    // Another tenant sees none of it.
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let other = admin.with_token(&admin.tenant("other").await);
    assert_eq!(other.get(&format!("/v1/executions/{id}")).await.status, 404);
    assert_eq!(other.get("/v1/state-machines/slow").await.status, 404);
    // A Wait for more seconds than fit in a timestamp is a year, not a crash.
    machine(
        &api,
        "forever",
        json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "SecondsPath": "$.s", "Next": "Done"},
                                          "Done": {"Type": "Succeed"}}}),
    )
    .await;
    let forever = start(&api, "forever", json!({"s": u64::MAX})).await;
    let t = Instant::now();
    while !history(&api, &forever)
        .await
        .iter()
        .any(|ev| ev["type"] == "StateExited" && ev["state"] == "W")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the Wait never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = api
        .post(&format!("/v1/executions/{forever}/stop"), json!({}))
        .await;
    assert_eq!(r.body["status"], "ABORTED", "{r:?}");

    // The CLI: create from a file, start and follow the states as they pass.
    let def = dir.path().join("flow.json");
    std::fs::write(
        &def,
        json!({"StartAt": "One", "States": {"One": {"Type": "Pass", "Next": "Two"},
            "Two": {"Type": "Pass", "Result": {"done": true}, "End": true}}})
        .to_string(),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
            .args(args)
            .env("NIMBUS_URL", &p.url)
            .env("NIMBUS_TOKEN", api.token.as_deref().unwrap())
            .output()
            .unwrap()
    };
    let out = cli(&["flow", "create", "two-steps", def.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "flow",
        "start",
        "two-steps",
        "--input",
        "{\"n\": 2}",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["output"], json!({"done": true}));
    let followed = String::from_utf8_lossy(&out.stderr);
    assert!(
        followed.contains("→ One") && followed.contains("→ Two"),
        "{followed}"
    );

    // Update and delete.
    let r = api
        .put(
            "/v1/state-machines/slow",
            json!({"definition": {"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(api.delete("/v1/state-machines/slow").await.status, 204);
    assert_eq!(api.get("/v1/state-machines/slow").await.status, 404);
    p.stop().await.unwrap();
}

/// A Wait is a row with a due time, not a sleeping task: the platform stops during
/// the Wait, starts again on the same data, and the execution goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_survives_a_restart_during_a_wait() {
    let dir = tempfile::tempdir().unwrap();
    let start_platform = || start_on(dir.path());
    let p = start_platform().await;
    let (api, owner_key) = acme(&p).await;
    deploy(
        &api,
        "fn",
        "python3",
        "index.handler",
        &[("index.py", HANDLER)],
        json!({}),
    )
    .await;
    machine(
        &api,
        "waits",
        json!({"StartAt": "Before", "States": {
            "Before": {"Type": "Task", "Resource": "fn", "Parameters": {"n.$": "$.n"},
                       "ResultPath": "$.before", "Next": "Wait"},
            "Wait": {"Type": "Wait", "Seconds": 2, "Next": "After"},
            "After": {"Type": "Task", "Resource": "fn", "Parameters": {"n.$": "$.before"},
                      "ResultPath": "$.after", "End": true}}}),
    )
    .await;
    let id = start(&api, "waits", json!({"n": 5})).await;
    // Into the Wait, then the whole platform stops.
    until_entered(&api, &id, "Wait").await;
    p.stop().await.unwrap();
    let p = start_platform().await;
    let api = Api::new(&p.url, Some(&owner_key));
    let e = finished(&api, &id, 30).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!({"n": 5, "before": 10, "after": 20}));
    let h = history(&api, &id).await;
    assert_eq!(
        h.iter().filter(|ev| ev["type"] == "StateEntered").count(),
        3,
        "each state entered once: {h:?}"
    );
    p.stop().await.unwrap();
}

/// A Map over 1,000 items with MaxConcurrency 50 finishes, in order, and never has
/// more than 50 items running; then a crash during a Parallel: the platform stops
/// while both branches wait, starts again, and the Parallel completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_items_and_a_restart_during_a_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let start_platform = || start_on(dir.path());
    let p = start_platform().await;
    let (api, owner_key) = acme(&p).await;
    machine(
        &api,
        "thousand",
        json!({"StartAt": "Each", "States": {"Each": {
            "Type": "Map", "MaxConcurrency": 50, "End": true,
            "Iterator": {"StartAt": "Tag", "States": {"Tag": {
                "Type": "Pass", "Parameters": {"item.$": "$", "tagged": true}, "End": true}}}}}}),
    )
    .await;
    let items: Vec<i64> = (0..1000).collect();
    let id = start(&api, "thousand", json!(items)).await;
    let most = most_items_at_once(&api, &p, &id, 120).await;
    assert!(
        (1..=50).contains(&most),
        "{most} items ran at once; MaxConcurrency is 50"
    );
    let e = finished(&api, &id, 1).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    let out = e["output"].as_array().unwrap();
    assert_eq!(out.len(), 1000);
    assert_eq!(out[999], json!({"item": 999, "tagged": true}));

    machine(
        &api,
        "both-wait",
        json!({"StartAt": "Both", "States": {"Both": {
            "Type": "Parallel", "End": true, "Branches": [
                {"StartAt": "W1", "States": {"W1": {"Type": "Wait", "Seconds": 1, "Next": "P1"},
                                             "P1": {"Type": "Pass", "Result": 1, "End": true}}},
                {"StartAt": "W2", "States": {"W2": {"Type": "Wait", "Seconds": 2, "Next": "P2"},
                                             "P2": {"Type": "Pass", "Result": 2, "End": true}}}]}}}),
    )
    .await;
    let id = start(&api, "both-wait", json!({})).await;
    until_entered(&api, &id, "W2").await;
    p.stop().await.unwrap();
    let p = start_platform().await;
    let api = Api::new(&p.url, Some(&owner_key));
    let e = finished(&api, &id, 30).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["output"], json!([1, 2]));
    p.stop().await.unwrap();
}
