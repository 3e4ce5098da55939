//! The node-local code cache: packages unpacked once per sha256, read-only after.
//!
//! Three tiers, nearest first: this node's disk, the availability zone's code cache
//! (`code_service::zone_cache`, when the node is given one), object storage. A zone
//! cache that fails or sends a package that does not match its digest is skipped for
//! that fetch: object storage is always the last word.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use code_service::DynStore;
use code_service::zone_cache::ZoneClient;
use tokio::sync::Mutex;

/// Where a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Already unpacked on this node.
    Local,
    /// The availability zone's code cache.
    Zone,
    /// Object storage.
    Object,
}

impl Tier {
    /// The tier's name, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Zone => "zone",
            Tier::Object => "object",
        }
    }
}

/// Fetches per tier since the node started: count and total time, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Packages fetched from the zone cache, and the time spent (fetch + unpack).
    pub zone: (u64, u64),
    /// Packages fetched from object storage, and the time spent (fetch + unpack).
    pub object: (u64, u64),
    /// Zone cache fetches that failed and fell back to object storage.
    pub zone_failures: u64,
}

/// Unpacked packages under a directory, filled from the zone cache or object storage
/// on first use.
pub struct CodeCache {
    /// Where packages are unpacked, one directory per digest.
    dir: PathBuf,
    /// The object store holding `packages/{sha}.zip`.
    store: DynStore,
    /// The availability zone's code cache, if there is one.
    zone: Option<ZoneClient>,
    /// One fill at a time per digest.
    filling: moka::sync::Cache<String, Arc<Mutex<()>>>,
    /// What each tier has served.
    stats: std::sync::Mutex<TierStats>,
}

impl CodeCache {
    /// A cache under `dir`, filled from `zone` (if given) then `store`.
    pub fn new(dir: PathBuf, store: DynStore, zone: Option<ZoneClient>) -> Self {
        CodeCache {
            dir,
            store,
            zone,
            filling: moka::sync::Cache::new(10_000),
            stats: std::sync::Mutex::new(TierStats::default()),
        }
    }

    /// What each tier has served so far.
    pub fn stats(&self) -> TierStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
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

    /// The directory holding the unpacked package, and the tier it came from
    /// ([`Tier::Local`]: it was already there).
    pub async fn ensure(&self, sha256: &str) -> anyhow::Result<(PathBuf, Tier)> {
        anyhow::ensure!(
            code_service::zone_cache::is_digest(sha256),
            "bad code digest"
        );
        let dest = self.dir.join(sha256);
        // Present is the common case (a warm wasm call asks at every call): a stat
        // of a directory entry the kernel has cached, done here, costs far less than
        // the hop to a blocking thread and back.
        if std::fs::exists(&dest).unwrap_or(false) {
            return Ok((dest, Tier::Local));
        }
        let lock = self
            .filling
            .get_with(sha256.to_string(), || Arc::new(Mutex::new(())));
        let _guard = lock.lock().await;
        if tokio::fs::try_exists(&dest).await? {
            return Ok((dest, Tier::Local));
        }
        let started = Instant::now();
        let (bytes, tier) = self.fetch(sha256).await?;
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}", nimbus_core::new_id()));
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || unpack(&bytes, &tmp, &dest2)).await??;
        let us = started.elapsed().as_micros() as u64;
        {
            let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let t = if tier == Tier::Zone {
                &mut st.zone
            } else {
                &mut st.object
            };
            t.0 += 1;
            t.1 += us;
        }
        tracing::debug!(sha256, tier = tier.as_str(), us, "code package fetched");
        Ok((dest, tier))
    }

    /// Copies the object `key` from object storage to `dest` (atomically: a
    /// complete file or none). An error if it is not there.
    pub async fn fetch_object(&self, key: &str, dest: &std::path::Path) -> anyhow::Result<()> {
        let bytes = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{key} is not in object storage"))?;
        let tmp = dest.with_extension(format!("tmp.{}", nimbus_core::new_id()));
        tokio::fs::write(&tmp, &bytes).await?;
        tokio::fs::rename(&tmp, dest).await?;
        Ok(())
    }

    /// The package's bytes from the nearest remote tier that has them intact.
    async fn fetch(&self, sha256: &str) -> anyhow::Result<(Bytes, Tier)> {
        if let Some(zone) = &self.zone {
            match zone.get(sha256).await {
                Ok(Some(b)) => return Ok((b, Tier::Zone)),
                // The zone cache asks the same object storage: it is not there.
                Ok(None) => {}
                Err(e) => {
                    self.stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .zone_failures += 1;
                    tracing::warn!(sha256, error = %format!("{e:#}"), "zone code cache failed; fetching from object storage");
                }
            }
        }
        let bytes = self
            .store
            .get(&code_service::package_key(sha256))
            .await?
            .ok_or_else(|| anyhow::anyhow!("package {sha256} is missing from object storage"))?;
        anyhow::ensure!(
            code_service::zone_cache::matches_digest(&bytes, sha256),
            "package {sha256} in object storage does not match its digest"
        );
        Ok((bytes, Tier::Object))
    }
}

/// Lets the sandbox's user read every file and enter every directory of a package
/// (and run what its owner may run). Zips often carry `0600` files (Python's
/// `zipfile.writestr` makes them so), which the function, running as another user,
/// could not read; the package is the function's own and read-only to it anyway.
fn readable_by_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        // Directories and what the owner may run: r-x for all; other files: r--.
        let wanted = if meta.is_dir() || mode & 0o100 != 0 {
            mode | 0o555
        } else {
            mode | 0o444
        };
        if wanted != mode {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(wanted))?;
        }
        if meta.is_dir() {
            readable_by_all(&entry.path())?;
        }
    }
    Ok(())
}

/// Unpacks into `tmp`, then renames it to `dest`: readers never see half a package.
fn unpack(bytes: &[u8], tmp: &Path, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(tmp)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
    // `extract` refuses entries that would escape `tmp`; the code service checked too.
    archive.extract(tmp)?;
    readable_by_all(tmp)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use code_service::store::LocalStore;
    use code_service::zone_cache::ZoneCache;
    use std::io::Write as _;

    fn package(file: &str, body: &[u8]) -> (Bytes, String) {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file(file, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(body).unwrap();
        let bytes = Bytes::from(w.finish().unwrap().into_inner());
        let sha = code_service::zone_cache::digest(&bytes);
        (bytes, sha)
    }

    async fn store(dir: &Path) -> DynStore {
        Arc::new(LocalStore::new(dir.to_path_buf()).await.unwrap())
    }

    /// A zone cache over `store` on loopback; dropping the trigger stops it.
    async fn zone(
        dir: &Path,
        store: DynStore,
    ) -> (
        String,
        nimbus_core::shutdown::Trigger,
        tokio::task::JoinHandle<()>,
    ) {
        let cache = ZoneCache::open(dir.to_path_buf(), store, 1 << 30, None).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = nimbus_core::shutdown::channel();
        let task = tokio::spawn(async move {
            code_service::zone_cache::serve(cache, listener, shutdown)
                .await
                .unwrap()
        });
        (url, trigger, task)
    }

    #[test]
    fn private_files_of_a_package_become_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let private = zip::write::SimpleFileOptions::default().unix_permissions(0o600);
            z.add_directory("lib/", private.unix_permissions(0o700))
                .unwrap();
            z.start_file("lib/index.py", private).unwrap();
            z.write_all(b"x = 1").unwrap();
            z.start_file("bootstrap", private.unix_permissions(0o700))
                .unwrap();
            z.write_all(b"#!/bin/sh").unwrap();
            z.finish().unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("pkg");
        unpack(buf.get_ref(), &tmp.path().join("tmp"), &dest).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("lib/index.py"), 0o644);
        assert_eq!(mode("lib"), 0o755);
        assert_eq!(mode("bootstrap"), 0o755);
    }

    #[tokio::test]
    async fn tiers_are_tried_nearest_first() {
        let tmp = tempfile::tempdir().unwrap();
        // The zone cache reads the region's object store; this node's own store handle
        // is empty, so a package it unpacks came through the zone.
        let region = store(&tmp.path().join("region")).await;
        let empty = store(&tmp.path().join("empty")).await;
        let (bytes, sha) = package("index.py", b"def handler(e, c): return e");
        region
            .put(&code_service::package_key(&sha), bytes.clone())
            .await
            .unwrap();
        let (url, trigger, task) = zone(&tmp.path().join("zone"), region.clone()).await;
        let node = CodeCache::new(
            tmp.path().join("node"),
            empty.clone(),
            Some(ZoneClient::new(&url, None).unwrap()),
        );
        let (dir, tier) = node.ensure(&sha).await.unwrap();
        assert_eq!(tier, Tier::Zone);
        assert_eq!(
            std::fs::read(dir.join("index.py")).unwrap(),
            b"def handler(e, c): return e"
        );
        assert_eq!(node.ensure(&sha).await.unwrap().1, Tier::Local);
        let st = node.stats();
        assert_eq!((st.zone.0, st.object.0, st.zone_failures), (1, 0, 0));

        // Zone cache down: the node goes to object storage itself.
        trigger.fire();
        task.await.unwrap();
        let (bytes2, sha2) = package("index.py", b"other");
        empty
            .put(&code_service::package_key(&sha2), bytes2)
            .await
            .unwrap();
        assert_eq!(node.ensure(&sha2).await.unwrap().1, Tier::Object);
        let st = node.stats();
        assert_eq!((st.zone.0, st.object.0, st.zone_failures), (1, 1, 1));
        // Nowhere at all: a clear error.
        let err = node.ensure(&"c".repeat(64)).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("missing from object storage"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_package_that_does_not_match_its_digest_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = store(&tmp.path().join("objects")).await;
        let (bytes, _) = package("a.txt", b"real");
        let forged = "d".repeat(64);
        objects
            .put(&code_service::package_key(&forged), bytes)
            .await
            .unwrap();
        let node = CodeCache::new(tmp.path().join("node"), objects, None);
        let err = node.ensure(&forged).await.unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
        assert!(!tmp.path().join("node").join(&forged).exists());
    }
}
