//! Authentication (API keys and JWTs) and the per-tenant API rate limit. Who is
//! calling, as handlers see it, is [`crate::caller`].
//!
//! An API key is `nmb_<key-id>_<secret>`; only the SHA-256 of the secret is stored
//! (the secret is 192 random bits, so a slow hash adds nothing). Verified keys are
//! cached briefly; revocation evicts them at once here and, through a change event
//! on the bus, in every other gateway.
//!
//! Each key also has an AWS access-key pair for Signature V4 on the Lambda-compatible
//! API: the access key id is `NMBK` and the key id in capitals (so it names its key
//! with no lookup table); the secret access key is sealed at rest to its key, since
//! checking a signature needs it in clear. Revoking the key revokes the pair.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use nimbus_core::Error;
use nimbus_core::db::{api_key, tenant};
use nimbus_core::model::Role;
use nimbus_core::secrets::SecretBox;
use rand::RngCore;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::caller::{Caller, TenantInfo};

/// A verified API key, as cached.
#[derive(Debug, Clone)]
struct KeyRecord {
    /// SHA-256 of the secret.
    secret_sha256: [u8; 32],
    /// The key's role.
    role: Role,
    /// Its tenant (None for admins).
    tenant: Option<TenantInfo>,
    /// Revoked keys are cached too, so a flood of bad calls costs no database reads.
    revoked: bool,
    /// The sealed secret of its AWS access-key pair, if it has one.
    aws_secret_sealed: Option<String>,
}

/// JWT claims.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The API key the token was minted from.
    sub: String,
    /// The tenant id ("" for admins).
    tenant: String,
    /// The role.
    role: Role,
    iat: u64,
    exp: u64,
}

/// The authenticator: key cache, JWT keys and rate limiters.
pub struct Auth {
    /// Verified keys by id.
    keys: moka::future::Cache<String, Arc<KeyRecord>>,
    /// One limiter per tenant, with the rate it was built for.
    limiters: moka::sync::Cache<String, Arc<(u32, DefaultDirectRateLimiter)>>,
    /// With Redis: the rate counted for the whole region (every gateway), under keys
    /// with this prefix. The local limiters then stand in only while Redis fails.
    shared: std::sync::OnceLock<(redis::aio::ConnectionManager, String)>,
    /// HS256 signing key.
    encoding: EncodingKey,
    /// HS256 verification key.
    decoding: DecodingKey,
    /// Token lifetime.
    ttl: Duration,
}

/// A newly created key: the only time its secrets are seen.
pub struct NewKey {
    /// The key id.
    pub id: String,
    /// The full `nmb_…` key.
    pub token: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// The secret access key of its AWS pair (the id is [`access_key_id`]).
    pub aws_secret: String,
}

impl NewKey {
    /// The AWS secret, sealed to this key for storage.
    pub fn aws_secret_sealed(&self, secrets: &SecretBox) -> String {
        secrets.seal_for(&self.aws_secret, &aws_place(&self.id))
    }
}

/// Where a key's AWS secret is sealed to: its key.
fn aws_place(key_id: &str) -> String {
    format!("nimbus aws secret\0{key_id}")
}

/// The AWS access key id of an API key: 20 characters, as AWS's are.
pub fn access_key_id(key_id: &str) -> String {
    format!("NMBK{}", key_id.to_ascii_uppercase())
}

/// The API key id an AWS access key id names, if it is one of ours.
pub fn key_id_of(access_key_id: &str) -> Option<String> {
    let id = access_key_id.strip_prefix("NMBK")?;
    (id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| id.to_ascii_lowercase())
}

/// Makes a fresh API key and its AWS pair.
pub fn generate_key() -> NewKey {
    use base64::Engine as _;
    let mut id = [0u8; 8];
    let mut secret = [0u8; 24];
    let mut aws = [0u8; 30];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    rand::rng().fill_bytes(&mut aws);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    NewKey {
        token: format!("nmb_{id}_{secret}"),
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        id,
        // 40 characters, as AWS's secrets are.
        aws_secret: base64::engine::general_purpose::STANDARD.encode(aws),
    }
}

fn parse_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("nmb_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && !secret.is_empty()).then_some((id, secret))
}

impl Auth {
    /// An authenticator signing JWTs with `secret`.
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Auth {
            keys: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .support_invalidation_closures()
                .build(),
            limiters: moka::sync::Cache::builder().max_capacity(100_000).build(),
            shared: std::sync::OnceLock::new(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    /// Forgets a cached key (it was revoked or changed).
    pub async fn evict_key(&self, key_id: &str) {
        self.keys.invalidate(key_id).await;
    }

    /// Forgets every cached key (change events may have been missed). Rate limiters
    /// stay: a limiter follows its tenant's rate by itself.
    pub fn evict_all(&self) {
        self.keys.invalidate_all();
    }

    /// Forgets the cached keys of one tenant (its limits changed, or it was deleted),
    /// and of admins; no other tenant's.
    pub fn evict_tenant(&self, tenant_id: &str) {
        let id = tenant_id.to_string();
        let _ = self
            .keys
            .invalidate_entries_if(move |_, r| r.tenant.as_ref().is_none_or(|t| t.id == id));
    }

    async fn key_record(
        &self,
        db: &DatabaseConnection,
        key_id: &str,
    ) -> Result<Option<Arc<KeyRecord>>, Error> {
        if let Some(r) = self.keys.get(key_id).await {
            return Ok(Some(r));
        }
        let Some(k) = api_key::Entity::find_by_id(key_id.to_string())
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        let tenant = match &k.tenant_id {
            Some(tid) => match tenant::Entity::find_by_id(tid.clone()).one(db).await? {
                Some(t) => Some(TenantInfo::from(t)),
                // The tenant is gone: its keys are dead.
                None => return Ok(None),
            },
            None => None,
        };
        let mut sha = [0u8; 32];
        hex::decode_to_slice(&k.secret_sha256, &mut sha).map_err(|e| Error::Internal(e.into()))?;
        let rec = Arc::new(KeyRecord {
            secret_sha256: sha,
            role: k.role.parse()?,
            tenant,
            revoked: k.revoked_at.is_some(),
            aws_secret_sealed: k.aws_secret_sealed,
        });
        self.keys.insert(key_id.to_string(), rec.clone()).await;
        Ok(Some(rec))
    }

    /// Verifies a bearer token (API key or JWT).
    pub async fn verify(&self, db: &DatabaseConnection, token: &str) -> Result<Caller, Error> {
        let bad =
            || Error::Unauthenticated("the API key or token is invalid, expired or revoked".into());
        if let Some((id, secret)) = parse_key(token) {
            let rec = self.key_record(db, id).await?.ok_or_else(bad)?;
            let given: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            if rec.revoked || !bool::from(given.ct_eq(&rec.secret_sha256)) {
                return Err(bad());
            }
            return Ok(Caller {
                key_id: id.to_string(),
                role: rec.role,
                tenant: rec.tenant.clone(),
                acting_for: None,
                via_api_key: true,
            });
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|_| bad())?
            .claims;
        // A token dies with the key it was minted from.
        let rec = self.key_record(db, &claims.sub).await?.ok_or_else(bad)?;
        if rec.revoked || rec.role != claims.role {
            return Err(bad());
        }
        Ok(Caller {
            key_id: claims.sub,
            role: rec.role,
            tenant: rec.tenant.clone(),
            acting_for: None,
            via_api_key: false,
        })
    }

    /// The caller an AWS access key id stands for, and the pair's secret (to check
    /// the request's signature with). Unknown, revoked, or without a pair: None.
    pub async fn access_key(
        &self,
        db: &DatabaseConnection,
        secrets: &SecretBox,
        access_key_id: &str,
    ) -> Result<Option<(Caller, String)>, Error> {
        let Some(id) = key_id_of(access_key_id) else {
            return Ok(None);
        };
        let Some(rec) = self.key_record(db, &id).await? else {
            return Ok(None);
        };
        let Some(sealed) = rec.aws_secret_sealed.as_deref().filter(|_| !rec.revoked) else {
            return Ok(None);
        };
        let secret = secrets.open_for(sealed, &aws_place(&id)).map_err(|e| {
            Error::Internal(e.context("an AWS secret does not open with this region's secrets key"))
        })?;
        let caller = Caller {
            key_id: id,
            role: rec.role,
            tenant: rec.tenant.clone(),
            acting_for: None,
            via_api_key: true,
        };
        Ok(Some((caller, secret)))
    }

    /// Mints a JWT for a caller who presented an API key.
    pub fn mint(&self, caller: &Caller) -> Result<(String, u64), Error> {
        let now = chrono_now();
        let exp = now + self.ttl.as_secs();
        let claims = Claims {
            sub: caller.key_id.clone(),
            tenant: caller
                .tenant
                .as_ref()
                .map(|t| t.id.clone())
                .unwrap_or_default(),
            role: caller.role,
            iat: now,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(e.into()))?;
        Ok((token, exp))
    }

    /// Counts every tenant's API rate in the Redis at `url` (keys under `prefix`),
    /// shared by every gateway of the region.
    pub async fn share_rates(&self, url: &str, prefix: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let client = redis::Client::open(url).context("parsing router.redis_url")?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?;
        let _ = self.shared.set((conn, prefix.to_string()));
        Ok(())
    }

    /// Takes one call from the tenant's rate budget; Err(seconds to wait) when spent.
    /// With Redis, the budget is the region's (a one-second window counted there);
    /// if Redis fails, this gateway's own limiter decides.
    pub async fn check_rate(&self, tenant: &TenantInfo) -> Result<(), u64> {
        if let Some((conn, prefix)) = self.shared.get() {
            let second = nimbus_core::now_ms() / 1000;
            let key = format!("{prefix}:rate:{}:{second}", tenant.id);
            let counted: redis::RedisResult<(u64, i64)> = redis::pipe()
                .atomic()
                .incr(&key, 1u64)
                .pexpire(&key, 2_000)
                .query_async(&mut conn.clone())
                .await;
            match counted {
                Ok((n, _)) if n > tenant.limits.rate_per_sec.max(1) as u64 => return Err(1),
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "shared rate limit: Redis failed; limiting locally")
                }
            }
        }
        self.check_local_rate(tenant)
    }

    /// This gateway's own limiter for the tenant.
    fn check_local_rate(&self, tenant: &TenantInfo) -> Result<(), u64> {
        let rate = tenant.limits.rate_per_sec.max(1);
        let entry = self
            .limiters
            .get(&tenant.id)
            .filter(|e| e.0 == rate)
            .unwrap_or_else(|| {
                let n = NonZeroU32::new(rate).expect("rate ≥ 1");
                let e = Arc::new((
                    rate,
                    RateLimiter::direct(Quota::per_second(n).allow_burst(n)),
                ));
                self.limiters.insert(tenant.id.clone(), e.clone());
                e
            });
        entry.1.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

fn chrono_now() -> u64 {
    (nimbus_core::now_ms() / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::model::Limits;

    #[test]
    fn key_format() {
        let k = generate_key();
        let (id, secret) = parse_key(&k.token).unwrap();
        assert_eq!(id, k.id);
        assert_eq!(
            hex::encode(Sha256::digest(secret.as_bytes())),
            k.secret_sha256
        );
        assert!(parse_key("nmb_short_x").is_none());
        let akid = access_key_id(&k.id);
        assert_eq!(akid.len(), 20);
        assert_eq!(key_id_of(&akid).as_deref(), Some(k.id.as_str()));
        assert_eq!(k.aws_secret.len(), 40);
        assert!(key_id_of("AKIAIOSFODNN7EXAMPLE").is_none());
        assert!(key_id_of("NMBK0123456789ABCDEZ").is_none());
        assert!(parse_key("Bearer x").is_none());
    }

    #[test]
    fn rate_limit_per_tenant() {
        let auth = Auth::new(&[7u8; 32], Duration::from_secs(60));
        let t = TenantInfo {
            id: "t".into(),
            name: "t".into(),
            limits: Limits {
                rate_per_sec: 2,
                ..Limits::default()
            },
        };
        assert!(auth.check_local_rate(&t).is_ok());
        assert!(auth.check_local_rate(&t).is_ok());
        assert!(auth.check_local_rate(&t).unwrap_err() >= 1);
        // Another tenant's change (or every key evicted) does not refill it.
        auth.evict_tenant("other");
        auth.evict_all();
        assert!(auth.check_local_rate(&t).is_err());
    }

    /// With Redis, the rate is the region's: two gateways share one budget.
    #[tokio::test]
    async fn rate_limit_shared_through_redis() {
        let prefix = format!("nimbus-test-rate-{}", nimbus_core::new_id());
        let (a, b) = (
            Auth::new(&[7u8; 32], Duration::from_secs(60)),
            Auth::new(&[7u8; 32], Duration::from_secs(60)),
        );
        for g in [&a, &b] {
            g.share_rates("redis://127.0.0.1:6379", &prefix)
                .await
                .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)");
        }
        let t = TenantInfo {
            id: "t".into(),
            name: "t".into(),
            limits: Limits {
                rate_per_sec: 4,
                ..Limits::default()
            },
        };
        // Line up with the start of a second, so the budget is one window's.
        let ms = nimbus_core::now_ms() % 1000;
        if ms > 700 {
            tokio::time::sleep(Duration::from_millis((1000 - ms) as u64 + 10)).await;
        }
        let mut allowed = 0;
        for g in [&a, &b, &a, &b, &a, &b] {
            if g.check_rate(&t).await.is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(
            allowed, 4,
            "two gateways together allow the tenant's rate, not twice it"
        );
    }
}
