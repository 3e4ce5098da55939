//! Metering in `nimbus up`: every call's usage record, the usage API (JSON, CSV,
//! grouped by function, day, hour, tenant), and the monthly caps.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Api, deploy, invoke};
use sea_orm::EntityTrait as _;
use serde_json::{Value, json};

const SRC: &str = r#"
import time
def handler(event, context):
    time.sleep(event.get("ms", 0) / 1000)
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"request_id": context.aws_request_id}
"#;

/// Waits until the tenant's usage shows `requests` billed calls; returns the report.
async fn usage_with(api: &Api, query: &str, requests: u64) -> Value {
    let t = Instant::now();
    loop {
        let r = api.get(&format!("/v1/usage{query}")).await;
        assert_eq!(r.status, 200, "{r:?}");
        if r.body["totals"]["requests"].as_u64() == Some(requests) {
            return r.body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "usage never showed {requests} requests: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_reported_and_capped() {
    let (p, api, dir) = common::up(&[
        ("NIMBUS_USAGE__FLUSH_MS", "100"),
        ("NIMBUS_USAGE__KEEP_RECORDS", "true"),
        ("NIMBUS_ROUTER__PROVISION_INTERVAL_MS", "300"),
    ])
    .await;
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    admin.lift_limits("acme").await;
    deploy(
        &api,
        "work",
        "python3",
        "index.handler",
        &[("index.py", SRC)],
        json!({"memory_mb": 256, "timeout_ms": 1000, "reserved_concurrency": 1}),
    )
    .await;

    // Calls whose ends the client sees: successes, errors, a timeout, a throttle.
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut client_ms = 0u128;
    for (event, want, outcome) in [
        (json!({"ms": 20}), 200, "success"),
        (json!({"ms": 20}), 200, "success"),
        (json!({"ms": 50}), 200, "success"),
        (json!({"fail": true}), 200, "function_error"),
        (json!({"fail": true, "ms": 10}), 200, "function_error"),
        (json!({"ms": 3000}), 504, "timeout"),
    ] {
        let t = Instant::now();
        let r = invoke(&api, "work", "", event).await;
        client_ms += t.elapsed().as_millis();
        assert_eq!(r.status, want, "{:?}", r.body);
        seen.insert(r.h("x-request-id").unwrap().to_string(), outcome);
    }
    // One call holds the function's only slot; the next is throttled.
    let slow = {
        let api = api.clone();
        tokio::spawn(async move { invoke(&api, "work", "", json!({"ms": 600})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = invoke(&api, "work", "", json!({})).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    seen.insert(refused.h("x-request-id").unwrap().to_string(), "throttle");
    let t = Instant::now();
    let slow = slow.await.unwrap();
    client_ms += t.elapsed().as_millis() + 200;
    assert_eq!(slow.status, 200);
    seen.insert(slow.h("x-request-id").unwrap().to_string(), "success");

    // --- By function: the tenant's report.
    let report = usage_with(&api, "", 7).await;
    let item = &report["items"][0];
    assert_eq!(report["group_by"], "function");
    assert_eq!(item["function"], "work");
    assert_eq!(
        (
            item["requests"].as_u64(),
            item["errors"].as_u64(),
            item["timeouts"].as_u64(),
            item["throttles"].as_u64()
        ),
        (Some(7), Some(2), Some(1), Some(1)),
        "{report}"
    );
    assert!(item["cold_starts"].as_u64().unwrap() >= 1, "{report}");
    // Billed time covers what the function slept (and the whole timeout), and no
    // more than the client waited.
    let billed = item["billed_ms"].as_u64().unwrap();
    assert!(
        billed >= 20 + 20 + 50 + 10 + 1000 + 600,
        "billed {billed} ms: {report}"
    );
    assert!(
        (billed as u128) <= client_ms,
        "billed {billed} ms > {client_ms} ms waited"
    );
    let gbs = item["gb_seconds"].as_f64().unwrap();
    assert!(
        (gbs - billed as f64 * 256.0 / 1024.0 / 1000.0).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(report["totals"]["requests"], 7);
    assert_eq!(report["currency"], "USD");
    assert_eq!(report["estimated_cost"], 0.0, "within the free tier");

    // Every response the client got has exactly one record, with its outcome.
    let db = sea_orm::Database::connect(format!(
        "sqlite://{}/nimbus.db?mode=ro",
        dir.path().display()
    ))
    .await
    .unwrap();
    let records: HashMap<String, nimbus_core::db::usage_record::Model> =
        nimbus_core::db::usage_record::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.request_id.clone(), r))
            .collect();
    assert_eq!(records.len(), seen.len(), "{records:?}");
    for (id, outcome) in &seen {
        let r = records
            .get(id)
            .unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(r.outcome, *outcome, "{r:?}");
        assert_eq!(
            (r.function.as_str(), r.version.as_str(), r.memory_mb),
            ("work", "$LATEST", 256)
        );
        if *outcome == "timeout" {
            assert_eq!(r.billed_ms, 1000);
        }
        if *outcome == "throttle" {
            assert_eq!(r.billed_ms, 0);
        }
    }

    // --- The function's metrics: the same calls, with their durations.
    let m = api.get("/v1/functions/work/metrics").await;
    assert_eq!(m.status, 200, "{m:?}");
    assert_eq!(m.body["period_s"], 60, "an hour is shown by the minute");
    let points = m.body["points"].as_array().unwrap();
    assert!((60..=61).contains(&points.len()), "{}", points.len());
    let sum = |k: &str| points.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (
            sum("invocations"),
            sum("errors"),
            sum("timeouts"),
            sum("throttles")
        ),
        (7, 2, 1, 1),
        "{}",
        m.body
    );
    let totals = &m.body["totals"];
    assert_eq!(totals["invocations"], 7, "{totals}");
    // Handler durations: ~0, 10, 20, 20, 50, 600 and the 1,000 ms timeout.
    let ms = |k: &str| totals[k].as_f64().unwrap();
    assert!((10.0..=50.0).contains(&ms("duration_p50_ms")), "{totals}");
    assert!(ms("duration_max_ms") >= 1000.0, "{totals}");
    assert!(ms("duration_max_ms") < 1500.0, "{totals}");
    assert!(
        (600.0..=ms("duration_max_ms")).contains(&ms("duration_p99_ms")),
        "{totals}"
    );
    let avg = ms("duration_avg_ms");
    assert!((1700.0 / 7.0..2000.0 / 7.0).contains(&avg), "{totals}");
    let hourly = api.get("/v1/functions/work/metrics?period=3600").await;
    assert_eq!(hourly.body["totals"], m.body["totals"], "{hourly:?}");
    for (q, code) in [
        ("?period=59", 400),
        ("?period=90", 400),
        ("?from=2026-12-05T00:00:00Z&to=2026-12-01T00:00:00Z", 400),
        (
            "?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&period=60",
            400,
        ),
        ("?from=yesterday", 400),
        ("?colour=red", 400),
    ] {
        let r = api.get(&format!("/v1/functions/work/metrics{q}")).await;
        assert_eq!(r.status, code, "{q}: {r:?}");
        assert_eq!(r.error_code(), "InvalidRequest");
    }
    assert_eq!(api.get("/v1/functions/nope/metrics").await.status, 404);

    // --- By day and by hour: today, this hour.
    let today = &nimbus_core::rfc3339(nimbus_core::now_ms())[..10];
    let by_day = usage_with(&api, "?group_by=day", 7).await;
    assert_eq!(by_day["items"][0]["day"], today.to_string(), "{by_day}");
    let by_hour = usage_with(&api, "?group_by=hour", 7).await;
    assert_eq!(by_hour["items"].as_array().unwrap().len(), 1, "{by_hour}");
    let past = api
        .get("/v1/usage?from=2020-01-01&to=2020-01-31&group_by=day")
        .await;
    assert_eq!(past.status, 200);
    assert_eq!(past.body["items"], json!([]));
    assert_eq!(past.body["totals"]["requests"], 0);

    // --- CSV, by Accept or by format.
    let csv = reqwest::Client::new()
        .get(format!("{}/v1/usage", api.url))
        .bearer_auth(api.token.as_deref().unwrap())
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().await.unwrap();
    assert_eq!(
        api.get("/v1/usage?format=csv").await.body,
        Value::String(text.clone())
    );
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "function,requests,errors,timeouts,throttles,cold_starts,billed_ms,gb_seconds,provisioned_gb_seconds"
        )
    );
    assert!(lines.next().unwrap().starts_with("work,7,2,1,1,"), "{text}");

    // --- Bad queries are 400s; an invoker key may not read usage.
    for q in [
        "?group_by=week",
        "?from=2026-12-05&to=2026-12-01",
        "?from=yesterday",
        "?group_by=tenant",
        "?group_by=hour&from=2026-01-01&to=2026-12-01",
        "?format=xml",
        "?colour=red",
    ] {
        let r = api.get(&format!("/v1/usage{q}")).await;
        assert_eq!(r.status, 400, "{q}: {r:?}");
        assert_eq!(r.error_code(), "InvalidRequest");
    }
    let k = api
        .post("/v1/api-keys", json!({"role": "invoker", "name": "i"}))
        .await;
    let invoker = api.with_token(k.body["api_key"].as_str().unwrap());
    assert_eq!(invoker.get("/v1/usage").await.status, 403);
    assert_eq!(
        invoker.get("/v1/functions/work/metrics").await.status,
        200,
        "what a function did is readable by whoever may invoke it"
    );

    // --- Admins: one tenant, and every tenant.
    let theirs = admin.get("/v1/tenants/acme/usage").await;
    assert_eq!(theirs.status, 200);
    assert_eq!(theirs.body["totals"]["requests"], 7);
    assert_eq!(
        api.get("/v1/tenants/acme/usage").await.status,
        200,
        "a tenant reads its own"
    );
    let other = admin.with_token(&admin.tenant("other").await);
    assert_eq!(
        other.get("/v1/tenants/acme/usage").await.status,
        404,
        "never another's"
    );
    assert_eq!(other.get("/v1/usage").await.body["items"], json!([]));

    // --- A monthly cap: two more calls, then 429 QuotaExceeded naming the cap.
    let r = admin
        .put(
            "/v1/tenants/acme/limits",
            json!({"max_concurrency": 100, "rate_per_sec": 100000, "max_functions": 100,
                   "max_memory_mb": 3072, "monthly_requests": 9}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["tenant"]["limits"]["monthly_requests"], 9);
    assert_eq!(
        r.body["tenant"]["limits"]["monthly_gb_seconds"],
        Value::Null
    );
    for _ in 0..2 {
        let r = invoke(&api, "work", "", json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let over = api.post("/v1/functions/work/invoke", json!({})).await;
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.error_code(), "QuotaExceeded");
    let msg = over.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("monthly cap of 9 requests"), "{msg}");
    // Who is near their cap: acme first, at 100 %.
    let all = usage_with(&admin, "", 9).await;
    assert_eq!(all["group_by"], "tenant");
    assert_eq!(all["items"][0]["tenant"], "acme", "{all}");
    assert_eq!(all["items"][0]["monthly_requests_cap"], 9);
    assert_eq!(all["items"][0]["cap_used_pct"], 100.0, "{all}");
    // Raising the cap lets calls through at once.
    let r = admin
        .put(
            "/v1/tenants/acme/limits",
            json!({"max_concurrency": 100, "rate_per_sec": 100000, "max_functions": 100,
                   "max_memory_mb": 3072, "monthly_requests": null, "monthly_gb_seconds": 1000}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(invoke(&api, "work", "", json!({})).await.status, 200);
    let r = admin
        .put(
            "/v1/tenants/acme/limits",
            json!({"max_concurrency": 100, "rate_per_sec": 100000, "max_functions": 100,
                   "max_memory_mb": 3072, "monthly_requests": -1}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    // --- Provisioned concurrency is metered apart, by the minute it is configured:
    // one instance of 256 MB for a minute is 15 GB-seconds.
    let r = api
        .patch("/v1/functions/work", json!({"provisioned_concurrency": 1}))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let t = api.wait_task(r.body["task_id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "Succeeded", "{t}");
    let started = Instant::now();
    loop {
        let r = api.get("/v1/usage").await;
        let pc = r.body["items"][0]["provisioned_gb_seconds"]
            .as_f64()
            .unwrap();
        if pc > 0.0 {
            assert_eq!(pc % 15.0, 0.0, "{}", r.body);
            assert!(pc <= 30.0, "at most two minutes so far: {}", r.body);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not metered: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.stop().await.unwrap();
}
