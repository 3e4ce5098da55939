//! The node-local code cache: packages unpacked once per sha256, read-only after.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use code_service::DynStore;
use tokio::sync::Mutex;

/// Unpacked packages under a directory, filled from object storage on first use.
pub struct CodeCache {
    /// Where packages are unpacked, one directory per digest.
    dir: PathBuf,
    /// The object store holding `packages/{sha}.zip`.
    store: DynStore,
    /// One fill at a time per digest.
    filling: moka::sync::Cache<String, Arc<Mutex<()>>>,
}

impl CodeCache {
    /// A cache under `dir`.
    pub fn new(dir: PathBuf, store: DynStore) -> Self {
        CodeCache {
            dir,
            store,
            filling: moka::sync::Cache::new(10_000),
        }
    }

    /// Digests of the packages unpacked here.
    pub fn digests(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.len() == 64 && n.chars().all(|c| c.is_ascii_hexdigit()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The directory holding the unpacked package, and whether it was already there.
    pub async fn ensure(&self, sha256: &str) -> anyhow::Result<(PathBuf, bool)> {
        anyhow::ensure!(
            sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit()),
            "bad code digest"
        );
        let dest = self.dir.join(sha256);
        if tokio::fs::try_exists(&dest).await? {
            return Ok((dest, true));
        }
        let lock = self
            .filling
            .get_with(sha256.to_string(), || Arc::new(Mutex::new(())));
        let _guard = lock.lock().await;
        if tokio::fs::try_exists(&dest).await? {
            return Ok((dest, true));
        }
        let bytes = self
            .store
            .get(&code_service::package_key(sha256))
            .await?
            .ok_or_else(|| anyhow::anyhow!("package {sha256} is missing from object storage"))?;
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}", nimbus_core::new_id()));
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || unpack(&bytes, &tmp, &dest2)).await??;
        Ok((dest, false))
    }
}

/// Unpacks into `tmp`, then renames it to `dest`: readers never see half a package.
fn unpack(bytes: &[u8], tmp: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(tmp)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
    // `extract` refuses entries that would escape `tmp`; the code service checked too.
    archive.extract(tmp)?;
    match std::fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        // Another process filled it first.
        Err(_) if dest.exists() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
