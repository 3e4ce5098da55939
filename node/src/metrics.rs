//! What the node reports: its warm pools, its use, its counters and metrics.

use std::sync::atomic::Ordering;

use crate::counters::Counters;
use crate::{NodeAgent, code_cache};

impl NodeAgent {
    /// Instances per configuration: what a heartbeat reports for placement.
    pub fn pools(&self) -> Vec<proto::node::WarmPool> {
        self.pools.lock().expect("lock").warm()
    }

    /// Memory (MB) and instances in use on this node; a running wasm call counts as
    /// an instance of its memory limit.
    pub fn used(&self) -> (u64, u32) {
        let (m, n) = self.pools.lock().expect("lock").used();
        // Running wasm calls, at their memory limits.
        (
            m + self.wasm_running.1.load(Ordering::SeqCst) as u64,
            n + self.wasm_running.0.load(Ordering::SeqCst) as u32,
        )
    }

    pub(super) fn count_start(&self, cold: bool) {
        let c = if cold { &self.starts.0 } else { &self.starts.1 };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// What the node has done since it started.
    pub fn counters(&self) -> Counters {
        let idle = self.idle.lock().expect("lock");
        Counters {
            cold_starts: self.starts.0.load(Ordering::Relaxed),
            warm_starts: self.starts.1.load(Ordering::Relaxed),
            idle_instance_seconds: idle.instance_seconds,
            idle_mb_seconds: idle.mb_seconds,
        }
    }

    /// The node's metrics, Prometheus text.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let c = self.counters();
        let (memory_mb, instances) = self.used();
        let tiers = self.code_fetches();
        let node = &self.cfg.node_id;
        let rows: [(&str, &str, &str, String); 9] = [
            (
                "nimbus_node_cold_starts_total",
                "counter",
                "Calls that started an instance (or loaded a wasm module).",
                c.cold_starts.to_string(),
            ),
            (
                "nimbus_node_warm_starts_total",
                "counter",
                "Calls served by an instance already loaded.",
                c.warm_starts.to_string(),
            ),
            (
                "nimbus_node_idle_instance_seconds_total",
                "counter",
                "Time instances were loaded and not running a call.",
                format!("{:.3}", c.idle_instance_seconds),
            ),
            (
                "nimbus_node_idle_mb_seconds_total",
                "counter",
                "Idle instance time weighted by memory, MB-s.",
                format!("{:.1}", c.idle_mb_seconds),
            ),
            (
                "nimbus_node_instances",
                "gauge",
                "Instances alive (and wasm calls running).",
                instances.to_string(),
            ),
            (
                "nimbus_node_memory_mb",
                "gauge",
                "Memory of the instances alive, MB.",
                memory_mb.to_string(),
            ),
            (
                "nimbus_node_spares_used_total",
                "counter",
                "Cold starts served by a spare.",
                self.spares_used().to_string(),
            ),
            (
                "nimbus_node_code_fetches_zone_total",
                "counter",
                "Code packages fetched from the zone cache.",
                tiers.zone.0.to_string(),
            ),
            (
                "nimbus_node_code_fetches_object_total",
                "counter",
                "Code packages fetched from object storage.",
                tiers.object.0.to_string(),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
        }
        out
    }

    /// What each code tier (zone cache, object storage) has served this node.
    pub fn code_fetches(&self) -> code_cache::TierStats {
        self.cache.stats()
    }

    /// Digests of the packages unpacked on this node.
    pub fn cached_code(&self) -> Vec<String> {
        self.cache.digests()
    }
}
