//! The reaper: the keep-alive policy applied once a pass, and shutdown.

use super::pool::{FORGET_AFTER_MS, MAX_PARALLEL_STARTS};
use super::*;

impl NodeAgent {
    /// Kills every idle instance and fails every waiting call: the node is stopping.
    pub fn shutdown(&self) {
        self.spares.lock().expect("lock").clear();
        let pools: Vec<Pool> = self
            .pools
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, p)| p)
            .collect();
        let n: usize = pools.iter().map(|p| p.idle.len()).sum();
        self.live.fetch_sub(n, Ordering::SeqCst);
        drop(pools);
    }

    /// Applies the keep-alive policy: kills the idle instances the predictor (and,
    /// in a burst, the autoscaler) no longer wants, and starts those they want ahead
    /// of calls (pre-warms). Pools made only by [`NodeAgent::prewarm`] keep their
    /// instances for the fixed keep-alive. Returns how many instances were killed.
    pub fn reap(&self) -> usize {
        let now = nimbus_core::now_ms();
        let mut dead = Vec::new();
        let mut starts: Vec<(String, FunctionRef)> = Vec::new();
        {
            let mut pools = self.pools.lock().expect("lock");
            let mut room = self
                .cfg
                .max_instances
                .saturating_sub(self.live.load(Ordering::SeqCst));
            let instant = Instant::now();
            // Idle time since the last pass, at the idle counts of now.
            {
                let mut idle = self.idle.lock().expect("lock");
                if let Some(prev) = idle.sampled_at {
                    let dt = instant.duration_since(prev).as_secs_f64();
                    for p in pools.values() {
                        idle.instance_seconds += p.idle.len() as f64 * dt;
                        idle.mb_seconds += (p.idle.len() * p.memory_mb as usize) as f64 * dt;
                    }
                }
                idle.sampled_at = Some(instant);
            }
            for (key, pool) in pools.iter_mut() {
                pool.idle.retain(|i| {
                    if !i.alive() {
                        dead.push(i.clone());
                    }
                    i.alive()
                });
                // Provisioned instances stay, and the missing ones start, whatever
                // the policy below says.
                let floor_idle = pool.floor_idle(instant);
                let floor_missing = pool.floor(instant).saturating_sub(pool.size());
                let to_start = if let Some(keeper) = &pool.keeper {
                    let running = pool.busy + pool.waiters.len();
                    let average = pool.meter.take_average();
                    let mut want_idle = keeper.loaded_idle(now).len().max(floor_idle);
                    // Only pre-warm intervals start instances; keep-alive intervals
                    // keep the ones there are (a call that failed or crashed leaves
                    // none).
                    let mut may_start = keeper.prewarms_due(now).max(floor_missing);
                    let size = pool.size() as u32;
                    if let Some(scaler) = &mut pool.scaler {
                        scaler.record(now, average);
                        let scale = scaler.decide(now, size);
                        // A burst: hold (and start) what the panic window asks for.
                        if scale.panic {
                            let burst = (scale.desired as usize).saturating_sub(running);
                            want_idle = want_idle.max(burst);
                            may_start = may_start.max(burst);
                        }
                    }
                    // The least recently used go first (`idle` is oldest first).
                    while pool.idle.len() > want_idle {
                        dead.push(pool.idle.remove(0));
                    }
                    want_idle
                        .saturating_sub(pool.idle.len() + pool.starting)
                        .min(may_start)
                } else {
                    // Made by pre-warms only: the fixed keep-alive, most recently
                    // used kept first.
                    let mut kept = 0;
                    for i in std::mem::take(&mut pool.idle).into_iter().rev() {
                        let fresh =
                            i.last_used.lock().expect("lock").elapsed() < self.cfg.keep_alive;
                        if fresh || kept < floor_idle {
                            kept += 1;
                            pool.idle.push(i);
                        } else {
                            dead.push(i);
                        }
                    }
                    pool.idle.reverse();
                    floor_missing
                };
                if let Some(f) = &pool.func {
                    for _ in 0..to_start.min(room).min(MAX_PARALLEL_STARTS) {
                        pool.starting += 1;
                        room -= 1;
                        self.live.fetch_add(1, Ordering::SeqCst);
                        starts.push((key.clone(), f.clone()));
                    }
                }
            }
            pools.retain(|_, p| {
                p.size() > 0
                    || !p.waiters.is_empty()
                    || p.floor(instant) > 0
                    || (p.func.is_some() && now - p.last_call_ms < FORGET_AFTER_MS)
            });
        }
        let n = dead.len();
        self.live.fetch_sub(n, Ordering::SeqCst);
        drop(dead);
        if let Some(me) = self.me.upgrade() {
            for (key, f) in starts {
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.start_one(&key, &f).await {
                        // No more pre-warms of it until it is called again: a
                        // function that cannot start is not restarted every pass.
                        tracing::debug!(error = %e, "pre-warm failed");
                        if let Some(pool) = me.pools.lock().expect("lock").get_mut(&key) {
                            pool.func = None;
                        }
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
        let mut pools = self.pools.lock().expect("lock");
        let mut n = 0;
        for (k, pool) in pools.iter_mut() {
            if k.starts_with(&prefix) {
                n += pool.idle.len();
                pool.idle.clear();
                pool.func = None;
            }
        }
        self.live.fetch_sub(n, Ordering::SeqCst);
        n
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
