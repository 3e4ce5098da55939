//! The object store that holds code packages: a trait with a local-directory backend
//! (`nimbus up`) and an S3 backend (any S3-compatible server).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use nimbus_core::config::{ObjectsConfig, ObjectsKind};

/// Keyed blob storage. Keys are `/`-separated and never start with `/`.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, atomically: readers see the old object or the new one.
    async fn put(&self, key: &str, bytes: Bytes) -> anyhow::Result<()>;
    /// The object, or None if absent.
    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>>;
    /// Whether the object exists.
    async fn exists(&self, key: &str) -> anyhow::Result<bool>;
    /// Deletes the object; deleting an absent object is not an error.
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
}

/// A shared store handle.
pub type DynStore = Arc<dyn ObjectStore>;

/// Builds the configured store.
pub async fn from_config(cfg: &ObjectsConfig) -> anyhow::Result<DynStore> {
    Ok(match cfg.kind {
        ObjectsKind::None => {
            anyhow::bail!("this service stores code: set [objects] (kind = \"local\" or \"s3\")")
        }
        ObjectsKind::Local => {
            let dir = cfg
                .dir
                .clone()
                .context("objects.dir is required for local")?;
            Arc::new(LocalStore::new(dir).await?)
        }
        ObjectsKind::S3 => Arc::new(S3Store::new(cfg).await?),
    })
}

/// Objects as files under a directory.
pub struct LocalStore {
    /// The root directory.
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`, created if missing.
    pub async fn new(root: PathBuf) -> anyhow::Result<Self> {
        tokio::fs::create_dir_all(&root)
            .await
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            !key.is_empty()
                && !key.starts_with('/')
                && key
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != ".."),
            "invalid object key '{key}'"
        );
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // Write aside, then rename: a crash never leaves a half-written object.
        let tmp = path.with_extension(format!("tmp-{}", nimbus_core::new_id()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("renaming into {}", path.display()))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        Ok(tokio::fs::try_exists(self.path(key)?).await?)
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Objects in an S3 bucket.
pub struct S3Store {
    /// The SDK client.
    client: aws_sdk_s3::Client,
    /// The bucket.
    bucket: String,
}

impl S3Store {
    /// A store over the configured bucket; creates the bucket if it does not exist.
    pub async fn new(cfg: &ObjectsConfig) -> anyhow::Result<Self> {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let bucket = cfg
            .bucket
            .clone()
            .context("objects.bucket is required for s3")?;
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.s3_region.clone()))
            .force_path_style(cfg.path_style);
        if let Some(endpoint) = &cfg.endpoint {
            b = b.endpoint_url(endpoint);
        }
        if let (Some(ak), Some(sk)) = (&cfg.access_key, &cfg.secret_key) {
            b = b.credentials_provider(Credentials::new(ak, sk, None, None, "nimbus-config"));
        }
        let client = aws_sdk_s3::Client::from_conf(b.build());
        let store = S3Store { client, bucket };
        store.ensure_bucket().await?;
        Ok(store)
    }

    async fn ensure_bucket(&self) -> anyhow::Result<()> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let svc = e.as_service_error();
                if svc.is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))
                        .with_context(|| format!("creating bucket {}", self.bucket))
                }
            }
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))
            .with_context(|| format!("s3 put {key}"))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let data = out
                    .body
                    .collect()
                    .await
                    .with_context(|| format!("s3 get {key}"))?;
                Ok(Some(data.into_bytes()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))
                .with_context(|| format!("s3 get {key}")),
        }
    }

    async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))
                .with_context(|| format!("s3 head {key}")),
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(e)))
            .with_context(|| format!("s3 delete {key}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_roundtrip_and_key_checks() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path().to_path_buf()).await.unwrap();
        assert!(!s.exists("a/b").await.unwrap());
        s.put("a/b", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(
            s.get("a/b").await.unwrap().unwrap(),
            Bytes::from_static(b"x")
        );
        s.delete("a/b").await.unwrap();
        s.delete("a/b").await.unwrap();
        assert!(s.get("a/b").await.unwrap().is_none());
        assert!(s.put("../escape", Bytes::new()).await.is_err());
        assert!(s.put("/abs", Bytes::new()).await.is_err());
    }
}
