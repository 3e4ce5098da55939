//! The usage journal: append-only segment files on local disk, one open at a time
//! per process and `flock`ed by it, sealed (synced, unlocked) to be shipped. A
//! segment whose lock can be taken belongs to nobody alive: its writer sealed it
//! or died. Its name starts with its destination's tag.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};

/// A journal segment is closed past this size even between flushes.
const SEGMENT_BYTES: u64 = 16 << 20;

/// The append-only journal of one process: one open segment at a time, locked.
pub(crate) struct Journal {
    pub(crate) dir: PathBuf,
    /// The destination's tag, the first part of every segment's name.
    pub(crate) destination: String,
    open: Arc<Mutex<Option<Segment>>>,
    seq: Arc<AtomicU64>,
}

struct Segment {
    file: Flock<File>,
    written: u64,
}

impl Journal {
    pub(crate) fn new(dir: PathBuf, destination: String) -> Journal {
        Journal {
            dir,
            destination,
            open: Arc::default(),
            seq: Arc::default(),
        }
    }

    /// The same journal, for a blocking task.
    pub(crate) fn clone_handle(&self) -> Journal {
        Journal {
            dir: self.dir.clone(),
            destination: self.destination.clone(),
            open: self.open.clone(),
            seq: self.seq.clone(),
        }
    }

    pub(crate) fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut open = self.open.lock().expect("lock");
        if open.as_ref().is_none_or(|s| s.written >= SEGMENT_BYTES) {
            *open = Some(self.new_segment()?);
        }
        let seg = open.as_mut().expect("opened above");
        (&*seg.file).write_all(line)?;
        seg.written += line.len() as u64;
        Ok(())
    }

    fn new_segment(&self) -> std::io::Result<Segment> {
        let name = format!(
            "{}-{:013}-{}-{}.usage",
            self.destination,
            nimbus_core::now_ms(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.dir.join(name))?;
        let file = Flock::lock(f, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(Segment { file, written: 0 })
    }

    /// Closes the open segment, synced to disk, so that it can be shipped.
    pub(crate) fn seal(&self) -> std::io::Result<()> {
        let seg = self.open.lock().expect("lock").take();
        if let Some(seg) = seg {
            seg.file.sync_data()?;
        }
        Ok(())
    }
}

/// The segments in `dir` bound for `destination`, oldest first.
pub(crate) fn sealed_segments(dir: &Path, destination: &str) -> std::io::Result<Vec<PathBuf>> {
    let prefix = format!("{destination}-");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "usage")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// A segment taken for shipping: its lock (held until it is removed), its path and
/// its lines.
pub(crate) type Taken = (Flock<File>, PathBuf, Vec<Vec<u8>>);

/// A locked segment's lines; None if another process holds it (it is writing
/// or shipping it) or it is gone.
pub(crate) fn take_segment(path: &Path) -> std::io::Result<Option<Taken>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(e.into()),
    };
    // Shipped and removed by another process between our open and our lock.
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(path)?;
    let lines = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Ok(Some((lock, path.to_path_buf(), lines)))
}
