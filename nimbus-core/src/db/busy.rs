//! SQLite's busy handler, replaced, and the group commit told when others wait.
//!
//! A writer that finds SQLite's write lock taken sleeps in the busy handler and
//! tries again. SQLite's own handler (`sqlite3_busy_timeout`) sleeps 1, 2, 5 … and
//! then 100 ms between tries, so a writer can miss many short gaps between the lock's
//! holders and wait hundreds of milliseconds, or seconds while the group commit
//! (`db::group`) holds the lock group after group. This handler tries every 200 µs,
//! up to the same 10 s, and notes when a writer last waited: the group commit gives
//! the lock up to such writers before it begins its next group.

use std::os::raw::{c_int, c_void};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sqlx::sqlite::SqliteConnection;

/// Between two tries.
const POLL: Duration = Duration::from_micros(200);
/// How long a writer waits for the lock before SQLite answers `SQLITE_BUSY`.
const TIMEOUT: Duration = Duration::from_secs(10);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
/// When a writer outside the group last waited for the lock (µs since `EPOCH`).
static LAST_WAIT_US: AtomicU64 = AtomicU64::new(0);
/// Set while the group commit itself begins a group (its own wait is not a reason
/// to yield).
pub(super) static GROUP_BEGINNING: AtomicBool = AtomicBool::new(false);

fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// The handler: another try in `POLL`, until `TIMEOUT`.
extern "C" fn on_busy(_arg: *mut c_void, tries: c_int) -> c_int {
    if u128::from(tries.max(0) as u32) * POLL.as_micros() >= TIMEOUT.as_micros() {
        return 0;
    }
    if !GROUP_BEGINNING.load(Ordering::Relaxed) {
        LAST_WAIT_US.store(now_us(), Ordering::Relaxed);
    }
    std::thread::sleep(POLL);
    1
}

/// Installs the handler on a new connection (it replaces sqlx's busy timeout).
#[allow(unsafe_code)]
pub async fn install(conn: &mut SqliteConnection) -> Result<(), sea_orm::sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this connection's open handle, locked for the duration of the
    // call; the handler keeps no state behind its argument (null).
    let rc =
        unsafe { libsqlite3_sys::sqlite3_busy_handler(db, Some(on_busy), std::ptr::null_mut()) };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sea_orm::sqlx::Error::Protocol(format!(
            "sqlite3_busy_handler failed: {rc}"
        )));
    }
    Ok(())
}

/// Whether a writer outside the group waited for the lock in the last `within`.
pub(super) fn waited_within(within: Duration) -> bool {
    let last = LAST_WAIT_US.load(Ordering::Relaxed);
    last != 0 && now_us().saturating_sub(last) < within.as_micros() as u64
}
