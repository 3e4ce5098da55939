//! Timer triggers: cron patterns with seconds, each tick fired once in the region.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use nimbus_core::bus::DynBus;
use nimbus_core::db::{trigger, trigger_fire};
use nimbus_core::model::parse_cron;
use nimbus_core::shutdown::Shutdown;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};

use crate::invocations::{NewInvocation, Origin, enqueue};

/// Fires timer triggers.
pub struct TimerScheduler {
    db: DatabaseConnection,
    bus: DynBus,
    /// The last tick this scheduler looked at, per trigger.
    seen: Mutex<HashMap<String, i64>>,
}

/// Ticks older than this are not fired late (after an outage, no storm).
const CATCH_UP_MS: i64 = 5_000;

impl TimerScheduler {
    /// A scheduler over `db`, queueing firings on `bus`.
    pub fn new(db: DatabaseConnection, bus: DynBus) -> Self {
        TimerScheduler {
            db,
            bus,
            seen: Mutex::default(),
        }
    }

    /// Fires every tick up to `now_ms` that no scheduler fired yet. Returns how many
    /// this call fired.
    pub async fn fire_due(&self, now_ms: i64) -> Result<usize, sea_orm::DbErr> {
        Ok(self.fire_due_next(now_ms).await?.0)
    }

    /// [`TimerScheduler::fire_due`], and the next tick of any timer (epoch ms).
    async fn fire_due_next(&self, now_ms: i64) -> Result<(usize, Option<i64>), sea_orm::DbErr> {
        use chrono::TimeZone as _;
        let timers = trigger::Entity::find()
            .filter(trigger::Column::Kind.eq("timer"))
            .all(&self.db)
            .await?;
        let mut fired = 0;
        let mut next_due: Option<i64> = None;
        for t in timers {
            let cfg: Value = serde_json::from_str(&t.config).unwrap_or_default();
            let Ok(cron) = parse_cron(cfg["cron"].as_str().unwrap_or_default()) else {
                continue;
            };
            let from = {
                let mut seen = self.seen.lock().expect("lock");
                let last = seen
                    .get(&t.id)
                    .copied()
                    .unwrap_or(t.created_at.max(now_ms - CATCH_UP_MS));
                seen.insert(t.id.clone(), now_ms);
                last.max(now_ms - CATCH_UP_MS)
            };
            let Some(mut at) = chrono::Utc.timestamp_millis_opt(from).single() else {
                continue;
            };
            while let Ok(next) = cron.find_next_occurrence(&at, false) {
                let tick = next.timestamp_millis();
                if tick > now_ms {
                    next_due = Some(next_due.map_or(tick, |d| d.min(tick)));
                    break;
                }
                at = next;
                if self.fire(&t, tick, now_ms).await? {
                    fired += 1;
                }
            }
        }
        Ok((fired, next_due))
    }

    /// Claims a tick; the winner queues the invocation.
    async fn fire(&self, t: &trigger::Model, tick: i64, now: i64) -> Result<bool, sea_orm::DbErr> {
        let invocation_id = nimbus_core::new_id();
        let claimed = trigger_fire::ActiveModel {
            trigger_id: Set(t.id.clone()),
            tick_ms: Set(tick),
            invocation_id: Set(invocation_id),
            fired_at: Set(now),
        }
        .insert(&self.db)
        .await;
        match claimed {
            Ok(_) => {}
            Err(e) if nimbus_core::db::is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        let event = json!({"type": "timer", "trigger_id": t.id,
            "time": nimbus_core::rfc3339(tick), "cron": serde_json::from_str::<Value>(&t.config).unwrap_or_default()["cron"]});
        match enqueue(
            &self.db,
            &self.bus,
            NewInvocation {
                tenant_id: &t.tenant_id,
                function: &t.function_name,
                qualifier: None,
                event: Bytes::from(event.to_string()),
                origin: Origin::Timer,
                replay_of: None,
                trace: None,
            },
        )
        .await
        {
            Ok(_) => {}
            Err(crate::invocations::EnqueueError::Backlog(limit)) => {
                tracing::warn!(tenant = %t.tenant_id, function = %t.function_name, limit, "timer tick dropped: the tenant's async backlog is full");
            }
            Err(crate::invocations::EnqueueError::Db(e)) => return Err(e),
        }
        Ok(true)
    }

    /// Fires on the wall clock until shutdown: wakes at the next tick of any timer
    /// (and at least every 500 ms, to see new timers).
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            let now = nimbus_core::now_ms();
            wait = match self.fire_due_next(now).await {
                Ok((_, Some(next))) => std::time::Duration::from_millis(
                    (next - nimbus_core::now_ms()).clamp(1, 500) as u64,
                ),
                Ok((_, None)) => std::time::Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "firing timers");
                    std::time::Duration::from_millis(500)
                }
            };
        }
    }
}
