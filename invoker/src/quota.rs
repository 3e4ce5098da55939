//! Concurrency quotas: calls in flight per tenant (`max_concurrency`) and per
//! function (`reserved_concurrency`).
//!
//! - [`Quotas::local`]: counters in this process. Exact with one router (`nimbus up`).
//! - [`Quotas::redis`]: leases in Redis shared by every router of the region. A call
//!   takes a lease in one atomic script (both limits checked, both leases added) and
//!   gives it back when it ends. A lease carries an expiry (the function's timeout
//!   plus a margin, on Redis's clock), so the slots of a router that dies come back
//!   on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long past the function's timeout a lease outlives its call, should the router
/// die before giving it back.
const LEASE_MARGIN_MS: u64 = 5_000;

/// One call's quota request.
pub struct Ask<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The tenant's limit.
    pub tenant_max: u32,
    /// The function.
    pub function: &'a str,
    /// The function's reserved concurrency, if set.
    pub function_max: Option<u32>,
    /// The function's timeout: the lease lives at most this long plus a margin.
    pub timeout_ms: u32,
}

/// Why a call got no slot.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// A limit is reached.
    #[error("{0}")]
    Full(String),
    /// The shared quota store cannot be reached.
    #[error("the quota store is unreachable: {0}")]
    Unavailable(String),
}

/// In-flight counters or leases.
#[derive(Clone)]
pub enum Quotas {
    /// This process's counters.
    Local(Arc<Mutex<HashMap<String, u32>>>),
    /// Leases in Redis.
    Redis(Arc<RedisQuotas>),
}

/// Leases in Redis.
pub struct RedisQuotas {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    acquire: redis::Script,
}

/// A slot held by a call; dropping it gives the slot back.
pub struct Slot {
    quotas: Quotas,
    keys: [String; 2],
    lease: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        match &self.quotas {
            Quotas::Local(m) => {
                let mut m = m.lock().expect("lock");
                for k in &self.keys {
                    if let Some(n) = m.get_mut(k) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            m.remove(k);
                        }
                    }
                }
            }
            Quotas::Redis(r) => {
                let (mut conn, keys, lease) = (
                    r.conn.clone(),
                    std::mem::take(&mut self.keys),
                    std::mem::take(&mut self.lease),
                );
                // After the reply: the caller does not wait for the release.
                tokio::spawn(async move {
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.zrem(k, &lease).ignore();
                    }
                    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                        // The lease expires on its own.
                        tracing::warn!(error = %e, "releasing a concurrency lease");
                    }
                });
            }
        }
    }
}

/// Drops expired leases, checks both limits, and adds the lease to both sets, in one
/// step. Returns 0 (granted), 1 (function full) or 2 (tenant full).
/// KEYS: tenant set, function set. ARGV: lease id, ttl ms, tenant max, function max
/// (-1: none).
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local tmax = tonumber(ARGV[3])
local fmax = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if fmax >= 0 and redis.call('ZCARD', KEYS[2]) >= fmax then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tmax then
  return 2
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
return 0
"#;

fn full_message(which: u8, a: &Ask<'_>) -> String {
    match which {
        1 => format!(
            "function '{}' is at its reserved concurrency of {}",
            a.function,
            a.function_max.unwrap_or(0)
        ),
        _ => format!("the tenant is at its concurrency limit of {}", a.tenant_max),
    }
}

impl Quotas {
    /// Counters in this process.
    pub fn local() -> Self {
        Quotas::Local(Arc::default())
    }

    /// Leases in the Redis at `url`, under keys starting with `prefix`.
    pub async fn redis(url: &str, prefix: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let client = redis::Client::open(url).context("parsing router.redis_url")?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?;
        Ok(Quotas::Redis(Arc::new(RedisQuotas {
            conn,
            prefix: prefix.to_string(),
            acquire: redis::Script::new(ACQUIRE),
        })))
    }

    /// Takes a slot for one call, or says which limit is reached.
    pub async fn acquire(&self, a: &Ask<'_>) -> Result<Slot, QuotaError> {
        match self {
            Quotas::Local(m) => {
                let (tk, fk) = (
                    format!("t:{}", a.tenant),
                    format!("f:{}/{}", a.tenant, a.function),
                );
                let mut counts = m.lock().expect("lock");
                let t = counts.get(&tk).copied().unwrap_or(0);
                let f = counts.get(&fk).copied().unwrap_or(0);
                if a.function_max.is_some_and(|max| f >= max) {
                    return Err(QuotaError::Full(full_message(1, a)));
                }
                if t >= a.tenant_max {
                    return Err(QuotaError::Full(full_message(2, a)));
                }
                *counts.entry(tk.clone()).or_default() += 1;
                *counts.entry(fk.clone()).or_default() += 1;
                Ok(Slot {
                    quotas: self.clone(),
                    keys: [tk, fk],
                    lease: String::new(),
                })
            }
            Quotas::Redis(r) => {
                // One hash tag per tenant: both keys live in one Redis Cluster slot.
                let keys = [
                    format!("{}:cc:{{{}}}:t", r.prefix, a.tenant),
                    format!("{}:cc:{{{}}}:f:{}", r.prefix, a.tenant, a.function),
                ];
                let lease = nimbus_core::new_id();
                let ttl = a.timeout_ms as u64 + LEASE_MARGIN_MS;
                let mut conn = r.conn.clone();
                let got: u8 = r
                    .acquire
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(&lease)
                    .arg(ttl)
                    .arg(a.tenant_max)
                    .arg(a.function_max.map_or(-1, i64::from))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| QuotaError::Unavailable(e.to_string()))?;
                match got {
                    0 => Ok(Slot {
                        quotas: self.clone(),
                        keys,
                        lease,
                    }),
                    n => Err(QuotaError::Full(full_message(n, a))),
                }
            }
        }
    }
}
