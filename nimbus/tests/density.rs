//! A node sized by what its instances really use: more python functions stay
//! resident than their nominal memory (or a fixed count) would allow, no call is
//! refused while the node makes room, and the memory bound holds.

mod common;

use std::time::Duration;

use common::{deploy, invoke};
use serde_json::json;

/// `nimbus up` offering 256 MB to instances (no spares), with `n` python
/// functions of 128 MB, `{prefix}-0` …, running `src`.
async fn node_of_256_mb(
    prefix: &str,
    n: usize,
    src: &str,
) -> (nimbus::Platform, common::Api, tempfile::TempDir) {
    let (p, api, dir) = common::up(&[
        ("NIMBUS_NODE__MEMORY_MB", "256"),
        ("NIMBUS_NODE__SPARES", "0"),
    ])
    .await;
    for i in 0..n {
        deploy(
            &api,
            &format!("{prefix}-{i}"),
            "python3",
            "index.handler",
            &[("index.py", src)],
            json!({"memory_mb": 128}),
        )
        .await;
    }
    (p, api, dir)
}

const PY: &str = "import os\nINSTANCE = os.urandom(8).hex()\ndef handler(event, context):\n    return INSTANCE\n";

#[tokio::test]
async fn functions_stay_resident_by_measured_memory_and_none_is_refused() {
    const FUNCTIONS: usize = 12;
    // 256 MB for instances: two of these 128 MB functions by their nominal size,
    // four at the 64 MB assumed before any instance is measured. An idle python
    // instance measures far less.
    let (p, api, _dir) = node_of_256_mb("f", FUNCTIONS, PY).await;
    // Each once: at first only a few fit, and each new one evicts the least
    // recently used idle instance. None is refused.
    for i in 0..FUNCTIONS {
        let r = invoke(&api, &format!("f-{i}"), "", json!({})).await;
        assert_eq!(r.status, 200, "f-{i}: {:?}", r.body);
    }
    // Passes until the reaper has measured the idle instances (once a second) and
    // every function stays resident: a whole pass with no cold start.
    let mut warm_pass = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let mut cold = 0;
        for i in 0..FUNCTIONS {
            let r = invoke(&api, &format!("f-{i}"), "", json!({})).await;
            assert_eq!(r.status, 200, "f-{i}: {:?}", r.body);
            cold += usize::from(r.h("x-nimbus-cold-start") == Some("true"));
        }
        if cold == 0 {
            warm_pass = true;
            break;
        }
    }
    assert!(
        warm_pass,
        "all {FUNCTIONS} functions resident in 256 MB once measured"
    );
    assert_eq!(p.node.instances(), FUNCTIONS);
    let used = p.node.measured_memory_kb();
    assert!(
        used > 0 && used <= 256 * 1024,
        "the instances fit what the node offers: {used} KB"
    );
    p.stop().await.unwrap();
}

#[tokio::test]
async fn instances_that_really_use_memory_are_held_within_the_node() {
    const FUNCTIONS: usize = 8;
    // Each instance writes 48 MB at import: at most five fit in 256 MB, whatever
    // the count bound (a node bounded by count alone would hold all eight).
    let big = "import os\nHELD = b'x' * (48 << 20)\nINSTANCE = os.urandom(8).hex()\ndef handler(event, context):\n    return INSTANCE\n";
    let (p, api, _dir) = node_of_256_mb("big", FUNCTIONS, big).await;
    let mut most = 0;
    for pass in 0..4 {
        for i in 0..FUNCTIONS {
            let r = invoke(&api, &format!("big-{i}"), "", json!({})).await;
            assert_eq!(r.status, 200, "pass {pass}, big-{i}: {:?}", r.body);
            most = most.max(p.node.instances());
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        most = most.max(p.node.instances());
    }
    assert!(most <= 5, "at most five 48 MB instances in 256 MB: {most}");
    let (used, live) = (p.node.measured_memory_kb(), p.node.instances());
    assert!(
        live > 0 && used / live as u64 >= 40 * 1024,
        "the idle instances were measured ({used} KB for {live})"
    );
    p.stop().await.unwrap();
}
