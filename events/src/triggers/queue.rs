//! Queue triggers: a tenant queue's messages, each an asynchronous invocation.

use std::collections::HashMap;

use bytes::Bytes;
use nimbus_core::bus::DynBus;
use nimbus_core::db::trigger;
use nimbus_core::shutdown::Shutdown;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::spec::tenant_queue;
use crate::invocations::{NewInvocation, Origin, enqueue};

/// Consumes the tenant queues that have a queue trigger: each message becomes an
/// asynchronous invocation (SQS's event shape), and is acked only when that
/// invocation has succeeded — or failed every retry and become a dead letter, which
/// keeps it. A consumer that dies leaves its messages unacked, and they come back.
pub struct QueueConsumers {
    db: DatabaseConnection,
    bus: DynBus,
}

/// Messages of one queue handled at once, per process.
const QUEUE_PREFETCH: u16 = 8;

impl QueueConsumers {
    /// Consumers over `db` and `bus`.
    pub fn new(db: DatabaseConnection, bus: DynBus) -> Self {
        QueueConsumers { db, bus }
    }

    /// Keeps one consumer per queue trigger (checked every 2 s) until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let me = std::sync::Arc::new(self);
        let mut running: HashMap<(String, String), (String, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        loop {
            match trigger::Entity::find()
                .filter(trigger::Column::Kind.eq("queue"))
                .all(&me.db)
                .await
            {
                Ok(ts) => {
                    let mut want = HashMap::new();
                    for t in ts {
                        let cfg: Value = serde_json::from_str(&t.config).unwrap_or_default();
                        if let Some(q) = cfg["queue"].as_str() {
                            want.insert((t.tenant_id.clone(), q.to_string()), t.function_name);
                        }
                    }
                    running.retain(|k, (f, task)| {
                        let keep = want.get(k) == Some(f);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for (k, f) in want {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            running.entry(k.clone())
                        {
                            let task = tokio::spawn(me.clone().consume(k.0, k.1, f.clone()));
                            slot.insert((f, task));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing queue triggers"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = shutdown.wait() => break,
            }
        }
        for (_, (_, task)) in running {
            task.abort();
        }
        Ok(())
    }

    async fn consume(
        self: std::sync::Arc<Self>,
        tenant_id: String,
        queue: String,
        function: String,
    ) {
        let name = tenant_queue(&tenant_id, &queue);
        let mut rx = match self.bus.consume(&name, QUEUE_PREFETCH).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, queue = %name, "consuming a tenant queue");
                return;
            }
        };
        let mut handling = tokio::task::JoinSet::new();
        while let Some(d) = rx.recv().await {
            while handling.len() >= QUEUE_PREFETCH as usize {
                handling.join_next().await;
            }
            let (me, tenant_id, queue, function) = (
                self.clone(),
                tenant_id.clone(),
                queue.clone(),
                function.clone(),
            );
            handling.spawn(async move {
                match me.deliver(&tenant_id, &queue, &function, &d.payload).await {
                    Ok(()) => d.ack().await,
                    Err(e) => {
                        tracing::warn!(error = %e, "a queue message; requeued");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        d.nack(true).await;
                    }
                }
            });
        }
    }

    /// Runs one message to its end: success, or a dead letter.
    async fn deliver(
        &self,
        tenant_id: &str,
        queue: &str,
        function: &str,
        payload: &[u8],
    ) -> Result<(), sea_orm::DbErr> {
        let message_id = nimbus_core::new_id();
        let body = String::from_utf8_lossy(payload);
        let event = json!({"Records": [{
            "messageId": message_id,
            "body": body,
            "attributes": {"SentTimestamp": nimbus_core::now_ms().to_string()},
            "eventSource": "nimbus:queue",
            "eventSourceARN": format!("arn:nimbus:queue:{tenant_id}:{queue}"),
        }]});
        let id = enqueue(
            &self.db,
            &self.bus,
            NewInvocation {
                tenant_id,
                function,
                qualifier: None,
                event: Bytes::from(event.to_string()),
                origin: Origin::Queue,
                replay_of: None,
                trace: None,
            },
        )
        .await
        // A full backlog: the message waits in its queue and comes back.
        .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
        // Short calls end in tens of ms; retries take minutes: look less often as it
        // goes on.
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
            let state = nimbus_core::db::invocation::Entity::find_by_id(id.clone())
                .one(&self.db)
                .await?
                .map(|i| i.state);
            use crate::invocations::state::{DEAD_LETTERED, FAILED, SUCCEEDED};
            match state.as_deref() {
                Some(SUCCEEDED | FAILED | DEAD_LETTERED) | None => return Ok(()),
                _ => {}
            }
        }
    }
}
