//! Waking this process's engine: a start, or a run that made another ready, need not
//! wait for the next poll.

use tokio::sync::Notify;

/// Wakes the engines of this process (a start, a finished child).
pub(crate) static WAKE: Notify = Notify::const_new();

/// Tells this process's engine there is work now.
pub fn wake() {
    WAKE.notify_waiters();
}
