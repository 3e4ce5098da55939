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

/// How many leases Redis counts against the tenant `t1` under `prefix`.
async fn held(prefix: &str) -> usize {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(format!("{prefix}:cc:{{t1}}:t"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn roomy<'a>(function: &'a str, tenant_max: u32) -> Ask<'a> {
    Ask {
        tenant: "t1",
        tenant_max,
        function,
        function_max: None,
        timeout_ms: 100,
    }
}

/// Waits until Redis counts `want` leases, for at most `within`.
async fn settles(prefix: &str, want: usize, within: Duration) {
    let t = Instant::now();
    loop {
        let n = held(prefix).await;
        if n == want {
            return;
        }
        assert!(t.elapsed() < within, "{n} leases held, {want} expected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn far_from_its_limits_a_router_reuses_its_leases_and_gives_them_back_when_idle() {
    let p = prefix();
    let a = Quotas::redis(REDIS, &p).await.unwrap();
    // Two calls at once, then calls one after another: Redis counts the two leases
    // the router holds, and no more.
    let (s1, s2) = (
        a.acquire(&roomy("f", 100)).await.unwrap(),
        a.acquire(&roomy("f", 100)).await.unwrap(),
    );
    drop((s1, s2));
    for _ in 0..20 {
        let s = a.acquire(&roomy("f", 100)).await.unwrap();
        drop(s);
    }
    assert_eq!(held(&p).await, 2);
    // Calls past the lease's time to live (100 ms timeout + 5 s margin) keep
    // reusing it: the router renews what it holds.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(5_600) {
        drop(a.acquire(&roomy("f", 100)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(held(&p).await, 2, "renewed, not expired and taken again");
    // Unused for a second, the leases go back.
    settles(&p, 0, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn near_a_limit_or_refused_a_router_holds_nothing() {
    let p = prefix();
    let (a, b) = (
        Quotas::redis(REDIS, &p).await.unwrap(),
        Quotas::redis(REDIS, &p).await.unwrap(),
    );
    // Two leases out of eight is a quarter: router a keeps them.
    let (s1, s2) = (
        a.acquire(&roomy("f", 8)).await.unwrap(),
        a.acquire(&roomy("f", 8)).await.unwrap(),
    );
    drop((s1, s2));
    assert_eq!(held(&p).await, 2);
    // Router b takes the other six; past a quarter, it keeps none of them.
    let mut busy = Vec::new();
    for _ in 0..6 {
        busy.push(b.acquire(&roomy("g", 8)).await.unwrap());
    }
    busy.pop();
    settles(&p, 7, Duration::from_secs(1)).await;
    busy.push(b.acquire(&roomy("g", 8)).await.unwrap());
    // The tenant is full. Refused, router a gives back the leases it holds at
    // once, and b's next call gets one.
    assert!(matches!(
        a.acquire(&roomy("g", 8)).await,
        Err(QuotaError::Full(_))
    ));
    settles(&p, 6, Duration::from_millis(500)).await;
    busy.push(b.acquire(&roomy("g", 8)).await.unwrap());
    drop(busy);
    settles(&p, 0, Duration::from_secs(1)).await;

    // Leases held under one limit are not used under another: they go back.
    drop(a.acquire(&roomy("f", 8)).await.unwrap());
    assert_eq!(held(&p).await, 1);
    let s = a.acquire(&roomy("f", 4)).await.unwrap();
    settles(&p, 1, Duration::from_millis(500)).await;
    drop(s);
}
