//! The reaper: the keep-alive policy applied once a pass, and shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::NodeAgent;

/// Idle instances whose memory is read per pass, at most: enough for an average.
const MEASURED_PER_PASS: usize = 64;
/// Idle instances killed per pass while the machine is short of memory.
const RELIEF_PER_PASS: usize = 8;

/// The machine's CPU time since boot, in ticks: (busy, all), from `/proc/stat`.
pub(crate) fn machine_cpu_time() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let t: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let all: u64 = t.iter().take(8).sum();
    let idle = t.get(3)? + t.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

/// Whether the machine has less than a twentieth of its memory available.
fn machine_memory_low() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return false;
    };
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(available)) => available < total / 20,
        _ => false,
    }
}

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
        self.measure_memory();
        if let Some((busy, all)) = machine_cpu_time() {
            self.pools.lock().expect("lock").cpu_time(busy, all);
        }
        let low = machine_memory_low();
        let (mut dead, starts) = {
            let mut idle = self.idle.lock().expect("lock");
            self.pools
                .lock()
                .expect("lock")
                .reap(self.cfg.keep_alive, &mut idle)
        };
        if low {
            // The machine itself runs short (busy instances grew, or something else
            // on it did): idle instances go first, a few a pass.
            dead.extend(self.pools.lock().expect("lock").relieve(RELIEF_PER_PASS));
        }
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

    /// Measures what idle instances use (a sample of them), for admitting more.
    fn measure_memory(&self) {
        let sample = self
            .pools
            .lock()
            .expect("lock")
            .sample_idle(MEASURED_PER_PASS);
        let kb: Vec<u64> = sample.iter().filter_map(|i| i.memory_kb()).collect();
        drop(sample);
        if !kb.is_empty() {
            let average = kb.iter().sum::<u64>() / kb.len() as u64;
            self.pools.lock().expect("lock").measured(average);
        }
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
