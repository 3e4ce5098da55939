//! Provisioned concurrency and scheduled warm-ups, kept on the nodes.
//!
//! The resource service reserves provisioned instances on nodes (rows in
//! `reservations`); scheduled warm-ups are windows on the function (`warmups`). Every
//! `router.provision_interval_ms` each router tells each node what it must hold:
//! `Prewarm` with a lease of three periods, for `$LATEST`'s current configuration. A
//! node keeps that many instances alive (restarting any that die) while the lease
//! runs, whatever its keep-alive policy says; the policy takes over when the lease
//! lapses, so a router that dies leaves nothing pinned for long. A reservation that
//! goes away is released at once (a lease of zero instances). Every router sends the
//! same floors: it does not matter how many run.
//!
//! Provisioned concurrency is metered as Lambda bills it: for as long as it is
//! configured, busy or idle. Each router records every reserved function's
//! instances × memory once a minute, under an id made of the function and the
//! minute, so the records of several routers are one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::db::{function, reservation};
use nimbus_core::model::{FunctionState, ScheduledWarmup, parse_cron};
use nimbus_core::shutdown::Shutdown;
use proto::node::FunctionRef;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};

use crate::router::Router;

/// Instances a function's warm-ups want at `now_ms`: the largest open window (a window
/// is open from a time its cron fires until `duration_s` later).
pub fn warmup_instances(warmups: &[ScheduledWarmup], now_ms: i64) -> u32 {
    let Some(now) = chrono::DateTime::from_timestamp_millis(now_ms) else {
        return 0;
    };
    warmups
        .iter()
        .filter(|w| {
            let Ok(cron) = parse_cron(&w.cron) else {
                return false;
            };
            let opened_after = now - chrono::Duration::seconds(w.duration_s as i64);
            cron.find_next_occurrence(&opened_after, false)
                .is_ok_and(|t| t <= now)
        })
        .map(|w| w.instances)
        .max()
        .unwrap_or(0)
}

/// (node, function id, version): a floor is for one version of a function on one
/// node (a new qualifier's version releases the old one's).
type FloorKey = (String, String, String);

/// What one function must have on one node.
#[derive(Clone)]
struct Floor {
    function: FunctionRef,
    instances: u32,
}

/// Keeps the floors on the nodes.
pub struct Provisioner {
    router: Arc<Router>,
    every: Duration,
    /// Floors sent last pass: those not wanted any more are released.
    sent: HashMap<FloorKey, FunctionRef>,
    /// The minute each function's provisioned concurrency was last metered.
    metered: HashMap<String, i64>,
}

/// One function's reserved (billed) provisioned concurrency.
struct Reserved {
    function_id: String,
    function: FunctionRef,
    instances: u32,
}

impl Provisioner {
    /// A provisioner over `router`'s metadata and nodes, renewing every `every`.
    pub fn new(router: Arc<Router>, every: Duration) -> Self {
        Provisioner {
            router,
            every,
            sent: HashMap::new(),
            metered: HashMap::new(),
        }
    }

    /// How long a node keeps a floor without news.
    fn lease(&self) -> Duration {
        self.every * 3
    }

    /// Renews the floors until shutdown.
    pub async fn run(mut self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %format!("{e:#}"), "provisioning pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    /// The floors wanted now, and the reservations among them.
    async fn wanted(&self) -> anyhow::Result<(HashMap<FloorKey, Floor>, Vec<Reserved>)> {
        let db = self.router.db();
        let reservations = reservation::Entity::find().all(db).await?;
        let mut by_function: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        for r in reservations {
            by_function
                .entry(r.function_id)
                .or_default()
                .push((r.node_id, r.instances.max(0) as u32));
        }
        // The functions with reservations or warm-ups, in one query.
        let functions = function::Entity::find()
            .filter(
                Condition::any()
                    .add(function::Column::Warmups.ne("[]"))
                    .add(function::Column::Id.is_in(by_function.keys().cloned())),
            )
            .all(db)
            .await?;
        let now = nimbus_core::now_ms();
        let mut wanted = HashMap::new();
        let mut reserved = Vec::new();
        for f in functions {
            if !f.online || f.state != FunctionState::Active.as_str() || f.code_sha256.is_none() {
                continue;
            }
            let fref = match self
                .router
                .qualified_ref(&f.tenant_id, &f.name, &f.provisioned_qualifier)
                .await
            {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                // E.g. an alias that was deleted: nothing to keep for it.
                Err(e) => {
                    tracing::warn!(function = %f.name, qualifier = %f.provisioned_qualifier, error = %e, "cannot provision");
                    continue;
                }
            };
            let mut per_node: HashMap<String, u32> = HashMap::new();
            for (node, n) in by_function.remove(&f.id).unwrap_or_default() {
                *per_node.entry(node).or_default() += n;
            }
            let provisioned: u32 = per_node.values().sum();
            if provisioned > 0 {
                reserved.push(Reserved {
                    function_id: f.id.clone(),
                    function: fref.clone(),
                    instances: provisioned,
                });
            }
            let warmups: Vec<ScheduledWarmup> =
                serde_json::from_str(&f.warmups).unwrap_or_default();
            let extra = warmup_instances(&warmups, now).saturating_sub(provisioned);
            if extra > 0
                && let Some(home) = self.router.nodes().home(&fref)
            {
                *per_node.entry(home).or_default() += extra;
            }
            for (node, instances) in per_node {
                wanted.insert(
                    (node, f.id.clone(), fref.version.clone()),
                    Floor {
                        function: fref.clone(),
                        instances,
                    },
                );
            }
        }
        Ok((wanted, reserved))
    }

    /// Meters each reservation once per minute (the minute it is seen in).
    fn meter(&mut self, reserved: &[Reserved]) {
        use crate::usage::{Outcome, UsageRecord};
        let Some(meter) = self.router.meter() else {
            return;
        };
        let minute = nimbus_core::now_ms() / 60_000 * 60_000;
        for r in reserved {
            if self.metered.get(&r.function_id) == Some(&minute) {
                continue;
            }
            self.metered.insert(r.function_id.clone(), minute);
            meter.record(&UsageRecord {
                id: format!("pc:{}:{minute}", r.function_id),
                tenant: r.function.tenant_id.clone(),
                function: r.function.function_name.clone(),
                version: r.function.version.clone(),
                region: meter.region().to_string(),
                at_ms: minute,
                outcome: Outcome::Provisioned,
                duration_us: 0,
                billed_ms: r.instances as u64 * 60_000,
                memory_mb: r.function.memory_mb,
                init_ms: 0,
                cold: false,
            });
        }
        self.metered
            .retain(|id, _| reserved.iter().any(|r| &r.function_id == id));
    }

    /// Sends every floor wanted now, and releases those that are not.
    pub async fn pass(&mut self) -> anyhow::Result<()> {
        let (wanted, reserved) = self.wanted().await?;
        self.meter(&reserved);
        let lease = self.lease();
        let nodes = self.router.nodes().clone();
        let mut sends = Vec::new();
        for ((node, _, _), floor) in &wanted {
            sends.push((node.clone(), floor.function.clone(), floor.instances));
        }
        for (key, f) in &self.sent {
            if !wanted.contains_key(key) {
                sends.push((key.0.clone(), f.clone(), 0));
            }
        }
        let results = futures::future::join_all(sends.into_iter().map(|(node, f, n)| {
            let nodes = nodes.clone();
            async move {
                let name = f.function_name.clone();
                let r = nodes.provision(&node, f, n, lease).await;
                (node, name, n, r)
            }
        }))
        .await;
        for (node, function, n, r) in results {
            match r {
                Ok(alive) if alive < n => {
                    tracing::debug!(%node, %function, want = n, alive, "provisioned instances starting")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%node, %function, want = n, error = %e, "provisioning failed")
                }
            }
        }
        self.sent = wanted.into_iter().map(|(k, f)| (k, f.function)).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn warmup_windows_open_at_their_cron_and_close_after_their_duration() {
        let w = vec![
            ScheduledWarmup {
                cron: "0 9 * * MON-FRI".into(),
                instances: 5,
                duration_s: 3600,
            },
            ScheduledWarmup {
                cron: "30 9 * * *".into(),
                instances: 8,
                duration_s: 600,
            },
        ];
        // 2026-11-23 is a Monday.
        assert_eq!(warmup_instances(&w, at("2026-11-23T08:59:59Z")), 0);
        assert_eq!(warmup_instances(&w, at("2026-11-23T09:00:00Z")), 5);
        assert_eq!(warmup_instances(&w, at("2026-11-23T09:35:00Z")), 8);
        assert_eq!(warmup_instances(&w, at("2026-11-23T09:45:00Z")), 5);
        assert_eq!(warmup_instances(&w, at("2026-11-23T10:00:00Z")), 0);
        // Sunday: only the daily one.
        assert_eq!(warmup_instances(&w, at("2026-11-22T09:05:00Z")), 0);
        assert_eq!(warmup_instances(&w, at("2026-11-22T09:31:00Z")), 8);
        assert_eq!(warmup_instances(&[], at("2026-11-22T09:31:00Z")), 0);
    }
}
