//! Concurrency leases in the real Redis on 127.0.0.1:6379 (`.ci/run` starts it), as
//! two routers share them. Each test uses its own key prefix.

use std::time::{Duration, Instant};

use invoker::quota::{Ask, QuotaError, Quotas};

const REDIS: &str = "redis://127.0.0.1:6379/0";

fn prefix() -> String {
    format!("test-{}", nimbus_core::new_id())
}

fn ask<'a>(function_max: Option<u32>, timeout_ms: u32) -> Ask<'a> {
    Ask {
        tenant: "t1",
        tenant_max: 3,
        function: "f",
        function_max,
        timeout_ms,
    }
}

#[tokio::test]
async fn two_routers_share_the_limits() {
    let p = prefix();
    let (a, b) = (
        Quotas::redis(REDIS, &p).await.unwrap(),
        Quotas::redis(REDIS, &p).await.unwrap(),
    );
    // Reserved concurrency 2 across both routers.
    let s1 = a.acquire(&ask(Some(2), 1000)).await.unwrap();
    let s2 = b.acquire(&ask(Some(2), 1000)).await.unwrap();
    for q in [&a, &b] {
        match q.acquire(&ask(Some(2), 1000)).await {
            Err(QuotaError::Full(m)) => assert!(m.contains("reserved concurrency of 2"), "{m}"),
            other => panic!("expected full, got {:?}", other.map(|_| ())),
        }
    }
    // The tenant's limit of 3 counts other functions too.
    let other = Ask {
        function: "g",
        ..ask(None, 1000)
    };
    let s3 = b.acquire(&other).await.unwrap();
    match a.acquire(&other).await {
        Err(QuotaError::Full(m)) => assert!(m.contains("tenant"), "{m}"),
        other => panic!("expected full, got {:?}", other.map(|_| ())),
    }
    // Giving a slot back (after the reply, asynchronously) frees it for either router.
    drop(s1);
    let t = Instant::now();
    let s4 = loop {
        if let Ok(s) = b.acquire(&ask(Some(2), 1000)).await {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "the slot came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop((s2, s3, s4));
}

#[tokio::test]
async fn a_dead_routers_leases_expire() {
    let p = prefix();
    let a = Quotas::redis(REDIS, &p).await.unwrap();
    // A router that dies never gives its slot back: forget it.
    let s = a.acquire(&ask(Some(1), 100)).await.unwrap();
    std::mem::forget(s);
    let b = Quotas::redis(REDIS, &p).await.unwrap();
    assert!(matches!(
        b.acquire(&ask(Some(1), 100)).await,
        Err(QuotaError::Full(_))
    ));
    // The lease lives the function's timeout (100 ms) plus the 5 s margin.
    let t = Instant::now();
    loop {
        if b.acquire(&ask(Some(1), 100)).await.is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(8), "the lease expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t.elapsed() > Duration::from_secs(4), "not before its time");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_free_pass() {
    // Nothing listens on port 1.
    assert!(Quotas::redis("redis://127.0.0.1:1/0", "x").await.is_err());
}
