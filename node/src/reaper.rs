//! The reaper: the keep-alive policy applied once a pass, and shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::NodeAgent;

impl NodeAgent {
    /// Kills every idle instance and fails every waiting call: the node is stopping.
    pub fn shutdown(&self) {
        self.spares.lock().expect("lock").clear();
        let pools = self.pools.lock().expect("lock").clear();
        drop(pools);
    }

    /// Applies the keep-alive policy ([`Pools::reap`]): kills the idle instances it
    /// no longer wants, and starts those it wants ahead of calls (pre-warms).
    /// Returns how many instances were killed.
    pub fn reap(&self) -> usize {
        let (dead, starts) = {
            let mut idle = self.idle.lock().expect("lock");
            self.pools
                .lock()
                .expect("lock")
                .reap(self.cfg.keep_alive, &mut idle)
        };
        let n = dead.len();
        drop(dead);
        if let Some(me) = self.me.upgrade() {
            for (key, f) in starts {
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.start_one(&key, &f).await {
                        // No more pre-warms of it until it is called again: a
                        // function that cannot start is not restarted every pass.
                        tracing::debug!(error = %e, "pre-warm failed");
                        me.pools.lock().expect("lock").stop_prewarming(&key);
                    }
                });
            }
        }
        n
    }

    /// Kills every idle instance of a function (it changed or was deleted), or of one
    /// of its versions.
    pub fn drain(&self, tenant_id: &str, function: &str, version: Option<&str>) -> usize {
        let prefix = match version {
            Some(v) => format!("{tenant_id}/{function}/{v}/"),
            None => format!("{tenant_id}/{function}/"),
        };
        self.pools.lock().expect("lock").drain(&prefix)
    }

    /// Runs the reaper until the agent is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        // Once a second at most: the autoscaler samples concurrency at each pass, and
        // pre-warms start within half a predictor bin of their time.
        let every = (self.cfg.keep_alive / 4)
            .min(Duration::from_millis(
                self.cfg.predictor_bin_ms.max(100) as u64 / 2,
            ))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(agent) => {
                        agent.top_up_spares();
                        let n = agent.reap();
                        if n > 0 {
                            tracing::debug!(instances = n, "reaped idle instances");
                        }
                    }
                    None => return,
                }
            }
        })
    }
}
