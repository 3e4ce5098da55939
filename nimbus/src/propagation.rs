//! `nimbus bench propagation`: how long an identity change made in one region takes
//! to take effect in another (through the global directory), measured from the
//! client: a key made in region A is polled in region B until it is accepted, then
//! revoked in A and polled in B until it is refused.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::Client;

/// What to measure.
pub struct Propagation {
    /// Keys to make and revoke.
    pub count: usize,
    /// The other region's endpoint.
    pub to: String,
}

/// Polls `f` every millisecond until it holds; how long that took (None after 10 s).
async fn until<F, Fut>(mut f: F) -> anyhow::Result<Option<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while !f().await? {
        if start.elapsed() > Duration::from_secs(10) {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Some(start.elapsed()))
}

/// The status of `GET /v1/functions` at `url` as `token` (a 429 is an error: the
/// measurement would be the rate limit's, not propagation's).
async fn status(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<u16> {
    let s = http
        .get(format!("{url}/v1/functions"))
        .bearer_auth(token)
        .send()
        .await?
        .status()
        .as_u16();
    anyhow::ensure!(s != 429, "{url} rate-limited the measurement");
    Ok(s)
}

/// Runs the measurement with `admin` (an admin key at region A's endpoint): a
/// throwaway tenant is made and deleted.
pub async fn run(admin: &Client, opts: Propagation) -> anyhow::Result<Value> {
    let tenant = format!("propagation-{:x}", rand::random::<u32>());
    let (_, made) = admin
        .call(Method::POST, "/v1/tenants", Some(json!({"name": tenant})))
        .await?;
    // The polling below is many calls a second: lift the tenant's API rate, so a
    // 429 never stands in for propagation.
    admin
        .call(
            Method::PUT,
            &format!("/v1/tenants/{tenant}/limits"),
            Some(json!({"max_concurrency": 10, "rate_per_sec": 1_000_000,
                        "max_functions": 10, "max_memory_mb": 128})),
        )
        .await?;
    let owner = Client::new(
        admin.url.clone(),
        made["api_key"].as_str().map(String::from),
    );
    let http = reqwest::Client::new();
    let to = opts.to.trim_end_matches('/').to_string();
    let owner_token = owner.token.clone().unwrap_or_default();
    // The floor: one authenticated request to region B, with a key B already has
    // (once B has the new limits too).
    until(|| async { Ok(status(&http, &to, &owner_token).await? == 200) })
        .await?
        .ok_or_else(|| anyhow::anyhow!("the new tenant never reached {to}"))?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut floor = Histogram::<u64>::new(3)?;
    for _ in 0..opts.count {
        let t = Instant::now();
        status(&http, &to, &owner_token).await?;
        floor.record(t.elapsed().as_micros() as u64)?;
    }
    let (mut made_h, mut revoked_h) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    let mut missed = 0;
    for i in 0..opts.count {
        let (_, k) = owner
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(json!({"role": "invoker", "name": format!("k{i}")})),
            )
            .await?;
        let (token, id) = (
            k["api_key"].as_str().unwrap_or_default().to_string(),
            k["id"].as_str().unwrap_or_default().to_string(),
        );
        match until(|| async { Ok(status(&http, &to, &token).await? == 200) }).await? {
            Some(d) => made_h.record(d.as_micros() as u64)?,
            None => missed += 1,
        }
        owner
            .call(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
            .await?;
        match until(|| async { Ok(status(&http, &to, &token).await? == 401) }).await? {
            Some(d) => revoked_h.record(d.as_micros() as u64)?,
            None => missed += 1,
        }
    }
    admin
        .call(Method::DELETE, &format!("/v1/tenants/{tenant}"), None)
        .await?;
    Ok(json!({
        "from": admin.url,
        "to": to,
        "made_key_accepted_in_other_region": crate::bench::summary(&made_h),
        "revoked_key_refused_in_other_region": crate::bench::summary(&revoked_h),
        "floor_one_request_to_other_region": crate::bench::summary(&floor),
        "not_within_10s": missed,
    }))
}
