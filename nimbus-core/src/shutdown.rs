//! Graceful shutdown, after mini-redis: the caller owns a [`Trigger`]; every task holds
//! a [`Shutdown`] and stops when the trigger fires (or is dropped).

use tokio::sync::watch;

/// Fires the shutdown of everything that holds a [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A cloneable handle that resolves when shutdown begins.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its first handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every holder to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    /// A new handle.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (or the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// Whether shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}
