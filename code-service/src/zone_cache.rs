//! The availability zone's code cache: the middle tier between a node's local cache
//! and object storage.
//!
//! One `nimbus serve code-cache` process per zone keeps the zone's recently used
//! packages on its disk, bounded by size (least recently used out first), and serves
//! them over plain HTTP to the zone's nodes: `GET /v1/packages/{sha256}`. A miss is
//! filled from object storage once, however many nodes ask at the same moment. Every
//! package is checked against its digest before it is kept, so a corrupt object is
//! never served; nodes check again on their side.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use nimbus_core::shutdown::Shutdown;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::DynStore;

/// Whether `s` is a sha256 digest in lower- or upper-case hex.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The sha256 digest of `bytes`, in lower-case hex: a package's name.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `bytes` hash to `sha256` (hex).
pub fn matches_digest(bytes: &[u8], sha256: &str) -> bool {
    digest(bytes).eq_ignore_ascii_case(sha256)
}

/// The bearer token between a region's nodes and its zone caches, derived from the
/// region's secrets key (`secrets.key`, the same on every process of the region): the
/// packages are tenants' code, served only to the region's own nodes.
pub fn token_from_key(secrets_key: &str) -> String {
    let mut input = b"nimbus zone code cache v1\0".to_vec();
    input.extend_from_slice(secrets_key.trim().as_bytes());
    digest(&input)
}

/// Where a package came from, for the `x-nimbus-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Already on the cache's disk.
    Hit,
    /// Fetched from object storage for this request (or one running at the same time).
    Miss,
}

/// The zone cache: packages on a local disk, bounded by size.
pub struct ZoneCache {
    /// One file per digest.
    dir: PathBuf,
    /// Where misses are filled from.
    store: DynStore,
    /// The packages on disk, weighted by size; evicting one deletes its file.
    index: moka::sync::Cache<String, u64>,
    /// One fill at a time per digest.
    filling: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// The bearer token a request must carry, if any.
    token: Option<String>,
}

impl ZoneCache {
    /// A cache under `dir` holding at most `max_bytes` of packages, filled from `store`,
    /// serving only requests that carry `token` (if given; see [`token_from_key`]).
    /// Packages already in `dir` (from an earlier run) are kept, up to the bound.
    pub fn open(
        dir: PathBuf,
        store: DynStore,
        max_bytes: u64,
        token: Option<String>,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let evict_dir = dir.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &String, size: &u64| u32::try_from(*size).unwrap_or(u32::MAX))
            .eviction_listener(move |sha: Arc<String>, _, cause| {
                // Only for size; a replaced entry keeps its file (the same package).
                if cause.was_evicted() {
                    let _ = std::fs::remove_file(evict_dir.join(sha.as_str()));
                }
            })
            .build();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_digest(&name) {
                index.insert(name, entry.metadata().map(|m| m.len()).unwrap_or(0));
            } else {
                // Half-written files of an earlier run.
                let _ = std::fs::remove_file(entry.path());
            }
        }
        index.run_pending_tasks();
        Ok(Arc::new(ZoneCache {
            dir,
            store,
            index,
            filling: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(60))
                .build(),
            token,
        }))
    }

    /// Packages on disk and their total size.
    pub fn usage(&self) -> (u64, u64) {
        self.index.run_pending_tasks();
        (self.index.entry_count(), self.index.weighted_size())
    }

    /// The package with this digest, or None if object storage does not have it.
    pub async fn get(&self, sha256: &str) -> anyhow::Result<Option<(Bytes, Source)>> {
        anyhow::ensure!(is_digest(sha256), "bad code digest");
        let sha = sha256.to_ascii_lowercase();
        if let Some(b) = self.read(&sha).await? {
            return Ok(Some((b, Source::Hit)));
        }
        let lock = self
            .filling
            .get_with(sha.clone(), || Arc::new(tokio::sync::Mutex::new(())));
        let _guard = lock.lock().await;
        if let Some(b) = self.read(&sha).await? {
            // Filled by the request we waited for.
            return Ok(Some((b, Source::Miss)));
        }
        let Some(bytes) = self.store.get(&crate::package_key(&sha)).await? else {
            return Ok(None);
        };
        anyhow::ensure!(
            matches_digest(&bytes, &sha),
            "package {sha} in object storage does not match its digest"
        );
        let tmp = self.dir.join(format!(".{sha}.{}", nimbus_core::new_id()));
        tokio::fs::write(&tmp, &bytes).await?;
        tokio::fs::rename(&tmp, self.dir.join(&sha)).await?;
        self.index.insert(sha, bytes.len() as u64);
        Ok(Some((bytes, Source::Miss)))
    }

    /// The package from disk, if there.
    async fn read(&self, sha: &str) -> anyhow::Result<Option<Bytes>> {
        if self.index.get(sha).is_none() {
            return Ok(None);
        }
        match tokio::fs::read(self.dir.join(sha)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            // Evicted between the lookup and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.index.invalidate(sha);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The HTTP service.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/v1/packages/{sha256}", get(serve_package))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone())
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn serve_package(
    State(cache): State<Arc<ZoneCache>>,
    UrlPath(sha256): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(want) = &cache.token {
        use subtle::ConstantTimeEq as _;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthenticated",
                "the zone code cache serves the region's nodes only".into(),
            );
        }
    }
    if !is_digest(&sha256) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "a package is named by its sha256 digest (64 hex digits)".into(),
        );
    }
    match cache.get(&sha256).await {
        Ok(Some((bytes, source))) => {
            let mut r = bytes.into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zip"),
            );
            h.insert(
                "x-nimbus-cache",
                HeaderValue::from_static(match source {
                    Source::Hit => "hit",
                    Source::Miss => "miss",
                }),
            );
            r
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no package {sha256}"),
        ),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), %sha256, "zone cache fill failed");
            error(
                StatusCode::BAD_GATEWAY,
                "Unavailable",
                format!("object storage: {e:#}"),
            )
        }
    }
}

/// Serves `cache` on `listener` until shutdown.
pub async fn serve(
    cache: Arc<ZoneCache>,
    listener: tokio::net::TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "zone code cache listening");
    axum::serve(listener, cache.router())
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await?;
    Ok(())
}

/// Fetches packages from a zone cache, for nodes.
#[derive(Clone)]
pub struct ZoneClient {
    /// The cache's base URL.
    base: String,
    /// The bearer token, if the cache wants one.
    token: Option<String>,
    http: reqwest::Client,
}

impl ZoneClient {
    /// A client of the cache at `base` (`http://host:port`), sending `token`.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Ok(ZoneClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    /// The package, checked against its digest; None if the cache says there is none.
    pub async fn get(&self, sha256: &str) -> anyhow::Result<Option<Bytes>> {
        let mut req = self.http.get(format!("{}/v1/packages/{sha256}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            r.status().is_success(),
            "zone cache answered {}",
            r.status()
        );
        let bytes = r.bytes().await?;
        anyhow::ensure!(
            matches_digest(&bytes, sha256),
            "the zone cache sent a package that does not match {sha256}"
        );
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use std::path::Path;

    /// Packages on disk under `dir`.
    fn file_count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| is_digest(&e.file_name().to_string_lossy()))
                    .count()
            })
            .unwrap_or(0)
    }

    async fn setup(max_bytes: u64) -> (tempfile::TempDir, Arc<ZoneCache>, DynStore) {
        let tmp = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(tmp.path().join("objects")).await.unwrap());
        let cache =
            ZoneCache::open(tmp.path().join("cache"), store.clone(), max_bytes, None).unwrap();
        (tmp, cache, store)
    }

    async fn put(store: &DynStore, body: &[u8]) -> String {
        let sha = digest(body);
        store
            .put(&crate::package_key(&sha), Bytes::copy_from_slice(body))
            .await
            .unwrap();
        sha
    }

    #[tokio::test]
    async fn fills_once_then_hits_and_refuses_what_is_not_there() {
        let (tmp, cache, store) = setup(1 << 20).await;
        let sha = put(&store, b"package one").await;
        let (b, src) = cache.get(&sha).await.unwrap().unwrap();
        assert_eq!((&b[..], src), (&b"package one"[..], Source::Miss));
        // The object store can lose it now: the zone has its copy.
        store.delete(&crate::package_key(&sha)).await.unwrap();
        let (b, src) = cache.get(&sha).await.unwrap().unwrap();
        assert_eq!((&b[..], src), (&b"package one"[..], Source::Hit));
        assert!(cache.get(&"0".repeat(64)).await.unwrap().is_none());
        assert!(cache.get("../etc/passwd").await.is_err());
        // A corrupt object is never kept or served.
        store
            .put(
                &crate::package_key(&"a".repeat(64)),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        assert!(cache.get(&"a".repeat(64)).await.is_err());
        assert_eq!(file_count(&tmp.path().join("cache")), 1);
        // A restart keeps what is on disk.
        drop(cache);
        let again = ZoneCache::open(tmp.path().join("cache"), store, 1 << 20, None).unwrap();
        assert_eq!(again.get(&sha).await.unwrap().unwrap().1, Source::Hit);
    }

    #[tokio::test]
    async fn stays_within_its_size_by_evicting_packages() {
        let (tmp, cache, store) = setup(10_000).await;
        let mut shas = Vec::new();
        for i in 0..10u8 {
            let sha = put(&store, &vec![i; 3_000]).await;
            cache.get(&sha).await.unwrap().unwrap();
            shas.push(sha);
        }
        let (count, size) = cache.usage();
        assert!(size <= 10_000, "{size} bytes kept");
        assert!((1..=3).contains(&count), "{count} packages kept");
        assert_eq!(file_count(&tmp.path().join("cache")) as u64, count);
        // An evicted package comes back from object storage.
        assert!(cache.get(&shas[0]).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn serves_over_http_and_the_client_checks_digests() {
        let tmp = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(tmp.path().join("objects")).await.unwrap());
        let token = token_from_key(&"ab".repeat(32));
        let cache = ZoneCache::open(
            tmp.path().join("cache"),
            store.clone(),
            1 << 20,
            Some(token.clone()),
        )
        .unwrap();
        let sha = put(&store, b"zip bytes").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = nimbus_core::shutdown::channel();
        let server = tokio::spawn(serve(cache, listener, shutdown));
        let client = ZoneClient::new(&base, Some(token.clone())).unwrap();
        assert_eq!(&client.get(&sha).await.unwrap().unwrap()[..], b"zip bytes");
        assert!(client.get(&"b".repeat(64)).await.unwrap().is_none());
        // Without the region's token (or with another region's): nothing.
        for t in [None, Some(token_from_key(&"cd".repeat(32)))] {
            let err = ZoneClient::new(&base, t)
                .unwrap()
                .get(&sha)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("401"), "{err}");
        }
        let http = reqwest::Client::new();
        let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(&token).send();
        let r = get("/v1/packages/nope".into()).await.unwrap();
        assert_eq!(r.status(), 400);
        let r = get(format!("/v1/packages/{sha}")).await.unwrap();
        assert_eq!(r.headers()["x-nimbus-cache"], "hit");
        trigger.fire();
        server.await.unwrap().unwrap();
        // Nothing listens any more: the client reports an error (the node falls back).
        assert!(client.get(&sha).await.is_err());
    }
}
