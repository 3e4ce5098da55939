//! Metering: one usage record for every invocation, and the monthly caps it feeds.
//!
//! The router appends each call's record to a journal file on local disk before the
//! caller gets its answer (a `write(2)`: a killed process loses nothing it wrote),
//! and a shipper moves sealed journal segments into the database once a second,
//! one transaction per segment that records its name with its hourly totals (a
//! segment shipped twice after a crash is counted once; `usage_store`). Each segment is `flock`ed by the process writing it, so several
//! processes may share the directory and a dead one's segments are shipped by the
//! next shipper to look. A segment's name starts with its destination's tag (a
//! digest of the database and region), so processes of different deployments
//! sharing a directory never ship each other's records.
//!
//! Caps: a tenant's month-to-date totals are read from the hourly table every
//! `usage.cap_refresh_ms` and the records this router wrote since are added; a cap
//! can be overshot by what other routers ran within one refresh and one flush.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_core::db::{MB_MS_PER_GB_S, tenant};
use nimbus_core::shutdown::Shutdown;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::journal::{Journal, sealed_segments, take_segment};
pub use crate::usage_record::{Outcome, UsageRecord, billed_ms, month_bounds};
use crate::usage_store::prune;
pub use crate::usage_store::{month_to_date, store};

/// Settings of the meter.
#[derive(Debug, Clone)]
pub struct MeterSettings {
    /// The journal's directory.
    pub dir: PathBuf,
    /// Names where this journal's records go (same database and region, same tag);
    /// letters and digits.
    pub destination: String,
    /// This region's name, in every record.
    pub region: String,
    /// How often the journal is shipped.
    pub flush: Duration,
    /// How long per-invocation records are kept.
    pub record_retention: Duration,
    /// How long each function's per-minute metrics are kept.
    pub metrics_retention: Duration,
    /// How often a tenant's month-to-date usage is re-read for its caps.
    pub cap_refresh: Duration,
    /// Also keep each invocation's record (by request id) for `record_retention`.
    pub keep_records: bool,
}

/// A tenant's caps and what it used this month, as this router knows it.
struct CapState {
    /// When it was read.
    read_at: Instant,
    /// The month it counts (its start, epoch ms).
    month: i64,
    requests_cap: Option<u64>,
    gb_seconds_cap: Option<u64>,
    /// Month-to-date from the database, when read.
    base_requests: u64,
    base_mb_ms: u64,
    /// What this router recorded since.
    local_requests: AtomicU64,
    local_mb_ms: AtomicU64,
    /// A re-read is under way.
    refreshing: std::sync::atomic::AtomicBool,
}

/// Why a call may not run: the tenant reached a monthly cap.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// A cap is reached.
    #[error("{0}")]
    Exceeded(String),
    /// The caps could not be read.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// The meter of one process: its journal, its shipper and the caps it checks.
pub struct Meter {
    db: DatabaseConnection,
    settings: MeterSettings,
    journal: Journal,
    caps: Arc<Mutex<HashMap<String, Arc<CapState>>>>,
    /// Bumped by [`Meter::forget`]: a re-read begun before is not kept.
    generation: Arc<AtomicU64>,
    /// Records the journal could not take (a full or failing disk).
    lost: AtomicU64,
}

impl Meter {
    /// A meter journaling to `settings.dir` (created if missing).
    pub fn new(db: DatabaseConnection, settings: MeterSettings) -> std::io::Result<Arc<Meter>> {
        std::fs::create_dir_all(&settings.dir)?;
        Ok(Arc::new(Meter {
            db,
            journal: Journal::new(settings.dir.clone(), settings.destination.clone()),
            settings,
            caps: Arc::default(),
            generation: Arc::default(),
            lost: AtomicU64::new(0),
        }))
    }

    /// This region's name.
    pub fn region(&self) -> &str {
        &self.settings.region
    }

    /// Records one call. Returns once the record is in the journal file.
    pub fn record(&self, rec: &UsageRecord) {
        if rec.outcome.billed()
            && let Some(c) = self.caps.lock().expect("lock").get(&rec.tenant)
        {
            c.local_requests.fetch_add(1, Ordering::Relaxed);
            c.local_mb_ms
                .fetch_add(rec.mb_ms().max(0) as u64, Ordering::Relaxed);
        }
        let mut line = serde_json::to_vec(rec).expect("a record serializes");
        line.push(b'\n');
        if let Err(e) = self.journal.append(&line) {
            let n = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(error = %e, lost = n, dir = %self.settings.dir.display(), "usage journal write failed; records lost");
            }
        }
    }

    /// Records this process could not journal.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Forgets a tenant's caps (its limits changed), or every tenant's.
    pub fn forget(&self, tenant_id: Option<&str>) {
        let mut caps = self.caps.lock().expect("lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        match tenant_id {
            Some(t) => {
                caps.remove(t);
            }
            None => caps.clear(),
        }
    }

    /// Refuses a call when the tenant reached a monthly cap.
    pub async fn check_caps(&self, tenant_id: &str) -> Result<(), CapError> {
        let now = nimbus_core::now_ms();
        let (month, next) = month_bounds(now);
        let cached = self.caps.lock().expect("lock").get(tenant_id).cloned();
        let state = match cached {
            Some(c) if c.month == month => {
                // Stale: re-read in the background (one re-read at a time); calls go
                // on with what this router knows meanwhile.
                if c.read_at.elapsed() >= self.settings.cap_refresh
                    && !c.refreshing.swap(true, Ordering::AcqRel)
                {
                    self.refresh(tenant_id, month, c.clone());
                }
                c
            }
            _ => {
                let c = Arc::new(read_caps(&self.db, tenant_id, month).await?);
                self.caps
                    .lock()
                    .expect("lock")
                    .insert(tenant_id.to_string(), c.clone());
                c
            }
        };
        let resets = nimbus_core::rfc3339(next);
        if let Some(cap) = state.requests_cap {
            let used = state.base_requests + state.local_requests.load(Ordering::Relaxed);
            if used >= cap {
                return Err(CapError::Exceeded(format!(
                    "the tenant's monthly cap of {cap} requests is reached ({used} used); it resets at {resets}"
                )));
            }
        }
        if let Some(cap) = state.gb_seconds_cap {
            let used_mb_ms = state.base_mb_ms + state.local_mb_ms.load(Ordering::Relaxed);
            let used = used_mb_ms as f64 / MB_MS_PER_GB_S;
            if used >= cap as f64 {
                return Err(CapError::Exceeded(format!(
                    "the tenant's monthly cap of {cap} GB-seconds is reached ({used:.1} used); it resets at {resets}"
                )));
            }
        }
        Ok(())
    }

    /// Re-reads a tenant's caps in the background and keeps the result, unless its
    /// caps were forgotten meanwhile (a limit changed).
    fn refresh(&self, tenant_id: &str, month: i64, stale: Arc<CapState>) {
        let (db, caps, generation) = (self.db.clone(), self.caps.clone(), self.generation.clone());
        let tenant = tenant_id.to_string();
        let seen = generation.load(Ordering::SeqCst);
        tokio::spawn(async move {
            match read_caps(&db, &tenant, month).await {
                Ok(fresh) => {
                    let mut caps = caps.lock().expect("lock");
                    if generation.load(Ordering::SeqCst) == seen {
                        caps.insert(tenant, Arc::new(fresh));
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "re-reading a tenant's caps");
                    stale.refreshing.store(false, Ordering::Release);
                }
            }
        });
    }
}

/// A tenant's caps, and its month-to-date usage if it has any.
async fn read_caps(
    db: &DatabaseConnection,
    tenant_id: &str,
    month: i64,
) -> Result<CapState, DbErr> {
    let t = tenant::Entity::find_by_id(tenant_id.to_string())
        .one(db)
        .await?;
    let (requests_cap, gb_seconds_cap) = t
        .map(|t| {
            (
                t.monthly_requests.map(|c| c.max(0) as u64),
                t.monthly_gb_seconds.map(|c| c.max(0) as u64),
            )
        })
        .unwrap_or_default();
    let (base_requests, base_mb_ms) = if requests_cap.is_some() || gb_seconds_cap.is_some() {
        month_to_date(db, tenant_id, month).await?
    } else {
        (0, 0)
    };
    Ok(CapState {
        read_at: Instant::now(),
        month,
        requests_cap,
        gb_seconds_cap,
        base_requests,
        base_mb_ms,
        local_requests: AtomicU64::new(0),
        local_mb_ms: AtomicU64::new(0),
        refreshing: std::sync::atomic::AtomicBool::new(false),
    })
}

impl Meter {
    /// Ships the journal every `flush` (and once more at shutdown), and prunes old
    /// records.
    pub async fn ship(self: Arc<Self>, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.settings.flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune: Option<Instant> = None;
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.wait() => true,
            };
            if let Err(e) = self.ship_once().await {
                tracing::warn!(error = %format!("{e:#}"), "shipping usage records; will retry");
            }
            if stopping {
                return Ok(());
            }
            if last_prune.is_none_or(|t| t.elapsed() > Duration::from_secs(600)) {
                last_prune = Some(Instant::now());
                let before =
                    nimbus_core::now_ms() - self.settings.record_retention.as_millis() as i64;
                if let Err(e) = prune(&self.db, before).await {
                    tracing::warn!(error = %e, "pruning usage records");
                }
                let before =
                    nimbus_core::now_ms() - self.settings.metrics_retention.as_millis() as i64;
                if let Err(e) = crate::usage_minutes::prune(&self.db, before).await {
                    tracing::warn!(error = %e, "pruning function metrics");
                }
            }
        }
    }

    /// Seals the open segment and ships every sealed one in the directory.
    /// Returns how many records were new.
    pub async fn ship_once(&self) -> anyhow::Result<usize> {
        let journal = self.journal.clone_handle();
        let segments = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<PathBuf>> {
            journal.seal()?;
            sealed_segments(&journal.dir, &journal.destination)
        })
        .await??;
        let mut stored = 0;
        for path in segments {
            let taken = tokio::task::spawn_blocking(move || take_segment(&path)).await??;
            let Some((lock, path, lines)) = taken else {
                continue;
            };
            let mut records = Vec::with_capacity(lines.len());
            for line in lines {
                match serde_json::from_slice::<UsageRecord>(&line) {
                    Ok(r) => records.push(r),
                    // A line cut short by a crash mid-write.
                    Err(e) => {
                        tracing::warn!(segment = %path.display(), error = %e, "skipping an unreadable usage record")
                    }
                }
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            stored += store(&self.db, &name, &records, self.settings.keep_records).await?;
            tokio::task::spawn_blocking(move || {
                let r = std::fs::remove_file(&path);
                drop(lock);
                r
            })
            .await??;
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::db::{usage_hourly, usage_record};

    #[test]
    fn billing_rounds_up_to_the_millisecond() {
        assert_eq!(billed_ms(0, 0), 1);
        assert_eq!(billed_ms(1, 0), 1);
        assert_eq!(billed_ms(1000, 0), 1);
        assert_eq!(billed_ms(1001, 0), 2);
        assert_eq!(billed_ms(2500, 120), 123);
    }

    fn rec(id: &str, outcome: Outcome, billed_ms: u64) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            tenant: "t1".into(),
            function: "f".into(),
            version: "$LATEST".into(),
            region: "r".into(),
            at_ms: nimbus_core::now_ms(),
            outcome,
            duration_us: billed_ms * 1000,
            billed_ms,
            memory_mb: 512,
            init_ms: 0,
            cold: false,
        }
    }

    async fn meter(dir: &std::path::Path) -> Arc<Meter> {
        let db = nimbus_core::db::connect(&nimbus_core::config::DatabaseConfig {
            url: format!("sqlite://{}/m.db?mode=rwc", dir.display()),
            schema: None,
            max_connections: 2,
            log_statements: false,
        })
        .await
        .unwrap();
        Meter::new(
            db,
            MeterSettings {
                dir: dir.join("usage"),
                destination: "d1".into(),
                region: "r".into(),
                flush: Duration::from_millis(100),
                record_retention: Duration::from_secs(3600),
                metrics_retention: Duration::from_secs(3600),
                cap_refresh: Duration::from_secs(5),
                keep_records: true,
            },
        )
        .unwrap()
    }

    async fn totals(m: &Meter) -> (u64, u64) {
        month_to_date(&m.db, "t1", 0).await.unwrap()
    }

    /// Records reach the totals once, whether shipped twice, left behind by a dead
    /// process, or cut short by a crash mid-line; another deployment's are left.
    #[tokio::test]
    async fn shipping_counts_each_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path()).await;
        m.record(&rec("a", Outcome::Success, 10));
        m.record(&rec("b", Outcome::FunctionError, 20));
        m.record(&rec("c", Outcome::Throttle, 0));
        assert_eq!(m.ship_once().await.unwrap(), 3);
        assert_eq!(totals(&m).await, (2, 30 * 512));
        assert_eq!(m.ship_once().await.unwrap(), 0, "nothing left to ship");
        // A dead process's segment: one record already stored, one new, a torn
        // line; and a segment of another deployment.
        let usage = dir.path().join("usage");
        let mut text = Vec::new();
        for r in [
            rec("a", Outcome::Success, 10),
            rec("d", Outcome::Timeout, 1000),
        ] {
            text.extend(serde_json::to_vec(&r).unwrap());
            text.push(b'\n');
        }
        text.extend(b"{\"id\":\"e\",\"ten");
        std::fs::write(usage.join("d1-0000000000001-1-0.usage"), &text).unwrap();
        std::fs::write(usage.join("d2-0000000000001-1-0.usage"), &text).unwrap();
        assert_eq!(m.ship_once().await.unwrap(), 1);
        assert_eq!(totals(&m).await, (3, 1030 * 512));
        assert!(!usage.join("d1-0000000000001-1-0.usage").exists());
        assert!(usage.join("d2-0000000000001-1-0.usage").exists());
        // The same record twice in one segment is one.
        m.record(&rec("f", Outcome::Success, 5));
        m.record(&rec("f", Outcome::Success, 5));
        assert_eq!(m.ship_once().await.unwrap(), 1);
        assert_eq!(totals(&m).await, (4, 1035 * 512));
        let h = usage_hourly::Entity::find().all(&m.db).await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].errors, h[0].timeouts, h[0].throttles), (1, 1, 1));
    }

    /// Without per-invocation records, a segment shipped twice (the shipper died
    /// between its commit and the file's removal) adds its totals once.
    #[tokio::test]
    async fn a_segment_shipped_twice_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path()).await;
        let recs = [
            rec("a", Outcome::Success, 10),
            rec("b", Outcome::Timeout, 100),
        ];
        assert_eq!(store(&m.db, "seg-1", &recs, false).await.unwrap(), 2);
        assert_eq!(store(&m.db, "seg-1", &recs, false).await.unwrap(), 0);
        assert_eq!(totals(&m).await, (2, 110 * 512));
        assert!(
            usage_record::Entity::find()
                .all(&m.db)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store(&m.db, "seg-2", &[rec("c", Outcome::Success, 1)], false)
                .await
                .unwrap(),
            1
        );
        assert_eq!(totals(&m).await, (3, 111 * 512));
    }

    /// A cap refuses once reached: the month's shipped usage plus what this router
    /// recorded since.
    #[tokio::test]
    async fn caps_count_shipped_and_local_usage() {
        let dir = tempfile::tempdir().unwrap();
        let m = meter(dir.path()).await;
        let t = tenant::ActiveModel {
            id: sea_orm::Set("t1".into()),
            name: sea_orm::Set("one".into()),
            max_concurrency: sea_orm::Set(10),
            rate_per_sec: sea_orm::Set(10),
            max_functions: sea_orm::Set(10),
            max_memory_mb: sea_orm::Set(1024),
            created_at: sea_orm::Set(0),
            max_queued_events: sea_orm::Set(10),
            max_queues: sea_orm::Set(1),
            max_buckets: sea_orm::Set(1),
            max_triggers: sea_orm::Set(1),
            max_objects: sea_orm::Set(1),
            monthly_gb_seconds: sea_orm::Set(None),
            monthly_requests: sea_orm::Set(Some(3)),
        };
        tenant::Entity::insert(t).exec(&m.db).await.unwrap();
        m.check_caps("t1").await.unwrap();
        m.record(&rec("a", Outcome::Success, 10));
        m.record(&rec("b", Outcome::Throttle, 0));
        m.ship_once().await.unwrap();
        m.forget(Some("t1"));
        m.check_caps("t1").await.unwrap();
        m.record(&rec("c", Outcome::Success, 10));
        m.check_caps("t1").await.unwrap();
        m.record(&rec("d", Outcome::Success, 10));
        let e = m.check_caps("t1").await.unwrap_err().to_string();
        assert!(e.contains("monthly cap of 3 requests"), "{e}");
        // Other tenants have no cap.
        m.check_caps("t2").await.unwrap();
    }

    #[test]
    fn months_start_on_the_first_utc() {
        // 2026-12-15T10:00:00Z
        let (a, b) = month_bounds(1_797_328_800_000);
        assert_eq!(nimbus_core::rfc3339(a), "2026-12-01T00:00:00.000Z");
        assert_eq!(nimbus_core::rfc3339(b), "2027-01-01T00:00:00.000Z");
    }
}
