//! Storage triggers: object events in a tenant bucket, in S3's notification shape.

use bytes::Bytes;
use nimbus_core::bus::DynBus;
use nimbus_core::db::trigger;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::invocations::{NewInvocation, Origin, enqueue};

/// An object event: what storage triggers fire on.
#[derive(Debug, Clone)]
pub struct ObjectEvent {
    /// The bucket's name.
    pub bucket: String,
    /// The object's key.
    pub key: String,
    /// "put" or "delete".
    pub action: &'static str,
    /// Bytes (0 for a delete).
    pub size: u64,
    /// The object's entity tag.
    pub etag: String,
    /// When it happened (epoch ms).
    pub at_ms: i64,
    /// Where the event came from ("nimbus:s3", or the webhook's own source).
    pub source: String,
}

/// Queues an invocation for every storage trigger of the tenant that matches the
/// event (bucket, action, prefix, suffix). Returns how many fired. The event has S3's
/// notification shape.
pub async fn fire_storage(
    db: &DatabaseConnection,
    bus: &DynBus,
    region: &str,
    tenant_id: &str,
    ev: &ObjectEvent,
) -> Result<usize, sea_orm::DbErr> {
    let triggers = trigger::Entity::find()
        .filter(trigger::Column::TenantId.eq(tenant_id))
        .filter(trigger::Column::Kind.eq("storage"))
        .all(db)
        .await?;
    let name = match ev.action {
        "put" => "ObjectCreated:Put",
        _ => "ObjectRemoved:Delete",
    };
    let record = json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": ev.source,
        "awsRegion": region,
        "eventTime": nimbus_core::rfc3339(ev.at_ms),
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": ev.bucket},
            "object": {"key": ev.key, "size": ev.size, "eTag": ev.etag},
        },
    }]});
    let mut fired = 0;
    for t in triggers {
        let cfg: Value = serde_json::from_str(&t.config).unwrap_or_default();
        let matches = cfg["bucket"] == ev.bucket.as_str()
            && cfg["events"]
                .as_array()
                .is_some_and(|es| es.iter().any(|e| e == ev.action))
            && ev
                .key
                .starts_with(cfg["prefix"].as_str().unwrap_or_default())
            && ev.key.ends_with(cfg["suffix"].as_str().unwrap_or_default());
        if !matches {
            continue;
        }
        match enqueue(
            db,
            bus,
            NewInvocation {
                tenant_id,
                function: &t.function_name,
                qualifier: None,
                event: Bytes::from(record.to_string()),
                origin: Origin::Storage,
                replay_of: None,
                trace: None,
            },
        )
        .await
        {
            Ok(_) => fired += 1,
            Err(crate::invocations::EnqueueError::Backlog(limit)) => {
                tracing::warn!(tenant = %tenant_id, function = %t.function_name, limit, "storage event dropped: the tenant's async backlog is full");
            }
            Err(crate::invocations::EnqueueError::Db(e)) => return Err(e),
        }
    }
    Ok(fired)
}
