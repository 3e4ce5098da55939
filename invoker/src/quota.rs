//! Concurrency quotas: calls in flight per tenant (`max_concurrency`) and per
//! function (`reserved_concurrency`).
//!
//! - [`Quotas::local`]: counters in this process. Exact with one router (`nimbus up`).
//! - [`Quotas::redis`]: leases in Redis shared by every router of the region. A call
//!   takes a lease in one atomic script (both limits checked, both leases added) and
//!   gives it back when it ends. A lease carries an expiry (the function's timeout
//!   plus a margin, on Redis's clock), so the slots of a router that dies come back
//!   on their own.
//!
//! **Shares.** Far from its limits, a router keeps the leases its calls gave back
//! and hands them to its next calls without asking Redis, as Lambda's frontends
//! hold shares of a quota. Redis then sees a call only when the router's
//! concurrency for a function grows; a steady load costs it one renewal script per
//! function and router every [`RENEW_EVERY`]. The quotas stay exact:
//! - every call still holds a lease that Redis counts, so no limit is ever
//!   exceeded across routers;
//! - a router keeps leases only while the counts Redis last told it were at most a
//!   quarter of both limits ([`SHARE_DIVISOR`]), and gives back those it has not
//!   used for [`SHARE_IDLE`]. So a slot a call gave back can be unavailable to other
//!   routers for at most that long, and only while the tenant was far from its limit
//!   when this router last asked. Near a limit, every call takes and gives back its
//!   own lease, as before;
//! - a router that is refused gives back its idle leases of that tenant at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long past the function's timeout a lease outlives its call, should the router
/// die before giving it back.
const LEASE_MARGIN_MS: u64 = 5_000;
/// How often a router renews the leases it holds and gives back idle ones.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// A router gives back the idle leases of a function it has not called for this
/// long.
pub const SHARE_IDLE: Duration = Duration::from_secs(1);
/// A router keeps leases only while the counts are at most this fraction (1/n) of
/// the limits.
pub const SHARE_DIVISOR: u32 = 4;

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
    renew: redis::Script,
    /// The leases this router holds, by function key.
    shares: Mutex<HashMap<String, Share>>,
}

/// The leases one router holds for one function.
struct Share {
    /// The tenant's and the function's lease sets.
    keys: [String; 2],
    /// The limits they were taken under; a call under other limits (changed
    /// configuration) does not use them.
    limits: (u32, Option<u32>),
    ttl_ms: u64,
    /// Leases held and not in use, each with when it expires at the earliest (on
    /// this router's clock: the moment its last grant or renewal was sent, plus
    /// its time to live).
    idle: Vec<(String, Instant)>,
    /// Leases held and in use.
    busy: u32,
    /// Whether the counts were far from the limits when Redis last answered.
    roomy: bool,
    last_used: Instant,
}

/// A slot held by a call; dropping it gives the slot back.
pub struct Slot {
    quotas: Quotas,
    keys: [String; 2],
    lease: String,
    /// When a Redis lease expires at the earliest.
    expires: Instant,
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
                let (keys, lease) = (
                    std::mem::take(&mut self.keys),
                    std::mem::take(&mut self.lease),
                );
                {
                    let mut shares = r.shares.lock().expect("lock");
                    if let Some(s) = shares.get_mut(&keys[1]) {
                        s.busy = s.busy.saturating_sub(1);
                        s.last_used = Instant::now();
                        if s.roomy {
                            s.idle.push((lease, self.expires));
                            return;
                        }
                    }
                }
                // After the reply: the caller does not wait for the release.
                r.release(&keys, vec![lease]);
            }
        }
    }
}

/// Drops expired leases, checks both limits, and adds the lease to both sets, in one
/// step. Returns {0, tenant count, function count} (granted, counts with it),
/// {1} (function full) or {2} (tenant full).
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
local fc = redis.call('ZCARD', KEYS[2])
if fmax >= 0 and fc >= fmax then
  return {1}
end
local tc = redis.call('ZCARD', KEYS[1])
if tc >= tmax then
  return {2}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
return {0, tc + 1, fc + 1}
"#;

/// Extends the leases in ARGV[2..] to ARGV[1] ms from now in both sets; returns
/// those that are gone (expired while the router was stalled).
/// KEYS: tenant set, function set.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
    redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[i])
  else
    table.insert(gone, ARGV[i])
  end
end
for _, k in ipairs(KEYS) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
return gone
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
        let r = Arc::new(RedisQuotas {
            conn,
            prefix: prefix.to_string(),
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            shares: Mutex::default(),
        });
        tokio::spawn(keep_shares(Arc::downgrade(&r)));
        Ok(Quotas::Redis(r))
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
                    expires: Instant::now(),
                })
            }
            Quotas::Redis(r) => {
                // One hash tag per tenant: both keys live in one Redis Cluster slot.
                let keys = [
                    format!("{}:cc:{{{}}}:t", r.prefix, a.tenant),
                    format!("{}:cc:{{{}}}:f:{}", r.prefix, a.tenant, a.function),
                ];
                if let Some((lease, expires)) = r.take_held(&keys, a) {
                    return Ok(Slot {
                        quotas: self.clone(),
                        keys,
                        lease,
                        expires,
                    });
                }
                let lease = nimbus_core::new_id();
                let ttl = a.timeout_ms as u64 + LEASE_MARGIN_MS;
                let mut conn = r.conn.clone();
                let expires = Instant::now() + Duration::from_millis(ttl);
                let got: Vec<u32> = r
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
                match got[..] {
                    [0, tenant, function] => {
                        r.hold(&keys, a, ttl, (tenant, function));
                        Ok(Slot {
                            quotas: self.clone(),
                            keys,
                            lease,
                            expires,
                        })
                    }
                    [n, ..] => {
                        r.refused(a.tenant);
                        Err(QuotaError::Full(full_message(n as u8, a)))
                    }
                    [] => Err(QuotaError::Unavailable("an empty answer".into())),
                }
            }
        }
    }
}

impl RedisQuotas {
    /// An idle lease this router holds for the function, under the same limits,
    /// that outlives the call by the margin.
    fn take_held(&self, keys: &[String; 2], a: &Ask<'_>) -> Option<(String, Instant)> {
        let mut shares = self.shares.lock().expect("lock");
        let s = shares.get_mut(&keys[1])?;
        if s.limits != (a.tenant_max, a.function_max) {
            // The limits changed: give back what was taken under the old ones.
            let idle = leases_of(std::mem::take(&mut s.idle));
            s.roomy = false;
            drop(shares);
            if !idle.is_empty() {
                self.release(keys, idle);
            }
            return None;
        }
        // A lease that came back from a long call may be near its end; the next
        // renewal extends it, and until then calls take fresh ones.
        let needed = Instant::now() + Duration::from_millis(a.timeout_ms as u64 + 1_000);
        let at = s.idle.iter().rposition(|(_, exp)| *exp >= needed)?;
        let lease = s.idle.swap_remove(at);
        s.busy += 1;
        s.last_used = Instant::now();
        Some(lease)
    }

    /// Records a lease Redis granted, with the counts it reported.
    fn hold(&self, keys: &[String; 2], a: &Ask<'_>, ttl_ms: u64, (tenant, function): (u32, u32)) {
        let roomy = tenant.saturating_mul(SHARE_DIVISOR) <= a.tenant_max
            && a.function_max
                .is_none_or(|max| function.saturating_mul(SHARE_DIVISOR) <= max);
        let mut shares = self.shares.lock().expect("lock");
        let s = shares.entry(keys[1].clone()).or_insert_with(|| Share {
            keys: keys.clone(),
            limits: (a.tenant_max, a.function_max),
            ttl_ms,
            idle: Vec::new(),
            busy: 0,
            roomy,
            last_used: Instant::now(),
        });
        s.limits = (a.tenant_max, a.function_max);
        s.ttl_ms = s.ttl_ms.max(ttl_ms);
        s.busy += 1;
        s.roomy = roomy;
        s.last_used = Instant::now();
    }

    /// A limit of `tenant` was reached: give back its idle leases now, for the
    /// calls of other routers.
    fn refused(&self, tenant: &str) {
        let tag = format!("{}:cc:{{{}}}:", self.prefix, tenant);
        let mut back = Vec::new();
        for s in self.shares.lock().expect("lock").values_mut() {
            if s.keys[0].starts_with(&tag) {
                s.roomy = false;
                if !s.idle.is_empty() {
                    back.push((s.keys.clone(), leases_of(std::mem::take(&mut s.idle))));
                }
            }
        }
        for (keys, leases) in back {
            self.release(&keys, leases);
        }
    }

    /// Gives leases back, in the background.
    fn release(&self, keys: &[String; 2], leases: Vec<String>) {
        let (mut conn, keys) = (self.conn.clone(), keys.clone());
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.zrem(k, &leases).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                // The leases expire on their own.
                tracing::warn!(error = %e, "releasing concurrency leases");
            }
        });
    }

    /// One pass of [`keep_shares`]: gives back idle leases of functions not called
    /// for [`SHARE_IDLE`], and renews the rest.
    async fn renew_pass(&self) {
        let mut renew = Vec::new();
        {
            let mut shares = self.shares.lock().expect("lock");
            shares.retain(|_, s| {
                if s.last_used.elapsed() >= SHARE_IDLE && !s.idle.is_empty() {
                    self.release(&s.keys, leases_of(std::mem::take(&mut s.idle)));
                }
                if !s.idle.is_empty() {
                    renew.push((s.keys.clone(), s.ttl_ms, leases_of(s.idle.clone())));
                }
                s.busy > 0 || !s.idle.is_empty()
            });
        }
        // The leases of calls in flight already live their timeout; only the idle
        // ones need renewing before they are handed out again.
        for (keys, ttl, leases) in renew {
            let mut conn = self.conn.clone();
            let expires = Instant::now() + Duration::from_millis(ttl);
            let gone: Result<Vec<String>, _> = self
                .renew
                .key(&keys[0])
                .key(&keys[1])
                .arg(ttl)
                .arg(&leases)
                .invoke_async(&mut conn)
                .await;
            let mut shares = self.shares.lock().expect("lock");
            let Some(s) = shares.get_mut(&keys[1]) else {
                continue;
            };
            match gone {
                Ok(gone) => {
                    // Leases handed out meanwhile were renewed too; their calls
                    // keep the earlier expiry, which only errs on the safe side.
                    s.idle.retain(|(l, _)| !gone.contains(l));
                    for (l, exp) in &mut s.idle {
                        if leases.contains(l) {
                            *exp = expires;
                        }
                    }
                }
                Err(e) => {
                    // Not renewed: stop handing them out; they expire on their own.
                    tracing::warn!(error = %e, "renewing concurrency leases");
                    s.idle.retain(|(l, _)| !leases.contains(l));
                }
            }
        }
    }
}

fn leases_of(idle: Vec<(String, Instant)>) -> Vec<String> {
    idle.into_iter().map(|(l, _)| l).collect()
}

/// Renews and gives back held leases every [`RENEW_EVERY`], while the quotas live.
async fn keep_shares(quotas: Weak<RedisQuotas>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(q) = quotas.upgrade() else { return };
        q.renew_pass().await;
    }
}
