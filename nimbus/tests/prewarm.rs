//! The predictor live on a node: a function called on a steady period is unloaded
//! between calls and pre-warmed just before each, once its idle-time histogram is
//! trusted (`nimbus up`, a python function, real processes).

mod common;

use std::time::{Duration, Instant};

use common::{Api, deploy, invoke};
use nimbus::{Platform, UpOptions};
use serde_json::json;

#[tokio::test]
async fn a_periodic_function_is_unloaded_between_calls_and_prewarmed() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(UpOptions {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: None,
        // 200 ms bins, so a 2-second period is learnt in seconds, not minutes.
        overrides: [
            ("NIMBUS_NODE__KEEP_ALIVE_POLICY", "hybrid"),
            ("NIMBUS_NODE__PREDICTOR_BIN_MS", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    })
    .await
    .unwrap();
    let admin = Api::new(&p.url, p.admin_key.as_deref());
    let api = admin.with_token(&admin.tenant("acme").await);
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
