//! Code package validation.
//!
//! [`inspect`] reads only the zip's central directory: cheap enough for the API
//! gateway to answer a bad upload with 400 at once. [`inspect_fully`] also inflates
//! every entry and counts the real bytes, so a header that lies about sizes (a zip
//! bomb) or a corrupt entry is caught before the package is stored.

use std::io::{Cursor, Read};

use nimbus_core::model::{MAX_UNZIPPED_BYTES, MAX_ZIP_BYTES, Runtime};
use sha2::{Digest, Sha256};

/// Most files a package may hold.
pub const MAX_FILES: usize = 20_000;
/// Entries larger than this must not compress better than [`MAX_RATIO`].
const RATIO_FLOOR_BYTES: u64 = 1024 * 1024;
/// The largest compression ratio accepted for a large entry.
pub const MAX_RATIO: u64 = 200;

/// Why a package was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackageError {
    /// Over 50 MiB zipped.
    #[error("the code package is {0} bytes; the limit is 50 MiB zipped")]
    TooLarge(usize),
    /// Not a readable zip.
    #[error("the code package is not a valid zip archive: {0}")]
    NotZip(String),
    /// An entry would land outside the function's directory.
    #[error("the code package has an entry that escapes its directory: '{0}'")]
    PathEscape(String),
    /// Symlinks could point anywhere.
    #[error("the code package has a symbolic link, which is not allowed: '{0}'")]
    Symlink(String),
    /// Too many entries.
    #[error("the code package has {0} entries; the limit is 20000")]
    TooManyFiles(usize),
    /// Too large once unzipped, or compressed suspiciously well.
    #[error("the code package looks like a zip bomb: {0}")]
    Bomb(String),
    /// Encrypted entries cannot be run.
    #[error("the code package has an encrypted or unsupported entry: '{0}'")]
    Unsupported(String),
    /// The handler's file is missing.
    #[error("the code package has no {0} for the handler")]
    MissingHandler(String),
    /// The handler itself is malformed.
    #[error("{0}")]
    BadHandler(String),
}

/// What validation learned about a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// Hex SHA-256 of the zip bytes: the package's identity.
    pub sha256: String,
    /// Bytes, zipped.
    pub zipped_size: u64,
    /// Bytes once unzipped (declared by the central directory; checked by `inspect_fully`).
    pub unzipped_size: u64,
    /// Number of files.
    pub files: usize,
}

/// One file of a checked package (at most `limit` bytes), by its path.
pub fn read_file(bytes: &[u8], path: &str, limit: u64) -> Result<Vec<u8>, PackageError> {
    use std::io::Read as _;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    let entry = archive
        .by_name(path)
        .map_err(|e| PackageError::NotZip(format!("'{path}': {e}")))?;
    let mut out = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| PackageError::NotZip(format!("'{path}': {e}")))?;
    if out.len() as u64 > limit {
        return Err(PackageError::Bomb(format!(
            "'{path}' is over {limit} bytes"
        )));
    }
    Ok(out)
}

/// Checks the central directory: size limits, names, ratios, and the handler's file.
pub fn inspect(bytes: &[u8], runtime: Runtime, handler: &str) -> Result<PackageInfo, PackageError> {
    check(bytes, runtime, handler, false)
}

/// Everything [`inspect`] checks, and inflates every entry to verify its real size
/// and checksum.
pub fn inspect_fully(
    bytes: &[u8],
    runtime: Runtime,
    handler: &str,
) -> Result<PackageInfo, PackageError> {
    check(bytes, runtime, handler, true)
}

fn check(
    bytes: &[u8],
    runtime: Runtime,
    handler: &str,
    inflate: bool,
) -> Result<PackageInfo, PackageError> {
    if bytes.len() > MAX_ZIP_BYTES {
        return Err(PackageError::TooLarge(bytes.len()));
    }
    let wanted = runtime
        .handler_files(handler)
        .map_err(|e| PackageError::BadHandler(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    if archive.len() > MAX_FILES {
        return Err(PackageError::TooManyFiles(archive.len()));
    }
    let mut declared_total: u64 = 0;
    let mut files = 0usize;
    let mut found_handler = false;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| PackageError::NotZip(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| PackageError::NotZip(e.to_string()))?
            .to_string();
        let Some(path) = entry.enclosed_name() else {
            return Err(PackageError::PathEscape(name));
        };
        if name.contains('\\') {
            return Err(PackageError::PathEscape(name));
        }
        if entry.is_symlink() {
            return Err(PackageError::Symlink(name));
        }
        if entry.is_dir() {
            continue;
        }
        files += 1;
        let size = entry.size();
        declared_total = declared_total.saturating_add(size);
        if declared_total > MAX_UNZIPPED_BYTES {
            return Err(PackageError::Bomb(format!(
                "it unzips to more than {} MiB",
                MAX_UNZIPPED_BYTES / 1024 / 1024
            )));
        }
        if size > RATIO_FLOOR_BYTES && size / entry.compressed_size().max(1) > MAX_RATIO {
            return Err(PackageError::Bomb(format!(
                "'{name}' compresses {}:1, more than {MAX_RATIO}:1",
                size / entry.compressed_size().max(1)
            )));
        }
        let path = path.to_string_lossy().replace('\\', "/");
        if wanted.contains(&path) {
            found_handler = true;
        }
    }
    if !found_handler {
        return Err(PackageError::MissingHandler(wanted.join(" or ")));
    }
    let mut unzipped_size = declared_total;
    if inflate {
        unzipped_size = 0;
        for i in 0..archive.len() {
            let mut entry = archive
                .by_index(i)
                .map_err(|e| PackageError::Unsupported(e.to_string()))?;
            if entry.is_dir() {
                continue;
            }
            let name = entry
                .name()
                .map_err(|e| PackageError::NotZip(e.to_string()))?
                .to_string();
            let declared = entry.size();
            // Read at most one byte more than declared: a longer entry is lying.
            let mut limited = (&mut entry).take(declared.saturating_add(1));
            let n = std::io::copy(&mut limited, &mut std::io::sink())
                .map_err(|e| PackageError::NotZip(format!("'{name}': {e}")))?;
            if n != declared {
                return Err(PackageError::Bomb(format!(
                    "'{name}' inflates to a different size than its header declares"
                )));
            }
            unzipped_size += n;
            if unzipped_size > MAX_UNZIPPED_BYTES {
                return Err(PackageError::Bomb("it unzips to more than 250 MiB".into()));
            }
        }
    }
    Ok(PackageInfo {
        sha256: hex::encode(Sha256::digest(bytes)),
        zipped_size: bytes.len() as u64,
        unzipped_size,
        files,
    })
}

/// Builds a zip in memory from (name, content) pairs: for tests and the CLI.
pub fn build_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o755);
        for (name, content) in files {
            w.start_file(*name, opts).expect("in-memory zip");
            w.write_all(content).expect("in-memory zip");
        }
        w.finish().expect("in-memory zip");
    }
    buf.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_python_package() {
        let z = build_zip(&[("index.py", b"def handler(e, c):\n    return e\n")]);
        let info = inspect_fully(&z, Runtime::Python3, "index.handler").unwrap();
        assert_eq!(info.files, 1);
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(
            inspect(&z, Runtime::Python3, "index.handler")
                .unwrap()
                .sha256,
            info.sha256
        );
    }

    #[test]
    fn rejects_missing_handler_and_non_zip() {
        let z = build_zip(&[("main.py", b"x")]);
        assert!(matches!(
            inspect(&z, Runtime::Python3, "index.handler"),
            Err(PackageError::MissingHandler(_))
        ));
        assert!(matches!(
            inspect(b"not a zip", Runtime::Python3, "index.handler"),
            Err(PackageError::NotZip(_))
        ));
    }

    #[test]
    fn rejects_zip_slip() {
        let z = build_zip(&[("index.py", b"x"), ("../../etc/cron.d/x", b"boom")]);
        assert!(matches!(
            inspect(&z, Runtime::Python3, "index.handler"),
            Err(PackageError::PathEscape(_))
        ));
        let z = build_zip(&[("/abs/index.py", b"x")]);
        assert!(inspect(&z, Runtime::Python3, "index.handler").is_err());
    }

    #[test]
    fn rejects_a_zip_bomb() {
        let zeros = vec![0u8; 20 * 1024 * 1024];
        let z = build_zip(&[("index.py", b"x"), ("zeros.bin", &zeros)]);
        assert!(z.len() < 100 * 1024, "test zip should be small");
        assert!(matches!(
            inspect(&z, Runtime::Python3, "index.handler"),
            Err(PackageError::Bomb(_))
        ));
    }

    #[test]
    fn rejects_oversized() {
        let big = vec![1u8; MAX_ZIP_BYTES + 1];
        assert!(matches!(
            inspect(&big, Runtime::Python3, "index.handler"),
            Err(PackageError::TooLarge(_))
        ));
    }
}
