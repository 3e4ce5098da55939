//! The BaaS parts triggers listen to: tenant buckets (objects that storage triggers
//! listen to), the S3 webhook (`POST /v1/events/s3`) through which an outside S3
//! server's events fire the same triggers, and tenant queues.
//!
//! Objects live in the region's object store under
//! `buckets/{tenant}/{bucket}/{sha256(key)}`: any key S3 accepts is safe there.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nimbus_core::Error;
use nimbus_core::db::bucket;
use nimbus_core::model::Role;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, PaginatorTrait as _,
    QueryFilter as _, QueryOrder as _, Set,
};
use serde_json::Value;
use sha2::Digest as _;

use crate::AppState;
use crate::caller::{Caller, TenantInfo};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::views::{BucketBody, BucketList, BucketView, Fired, MessageQueued, ObjectStored};

/// Largest object.
const MAX_OBJECT: usize = 50 * 1024 * 1024;

fn object_key(tenant_id: &str, bucket: &str, key: &str) -> String {
    format!(
        "buckets/{tenant_id}/{bucket}/{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

fn etag(bytes: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(bytes)[..16])
}

fn validate_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > 1024 || key.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "an object key is 1 to 1024 bytes without control characters".into(),
        ));
    }
    Ok(())
}

/// `PUT /v1/buckets/{bucket}`: creates a bucket (201), or finds it (200).
#[utoipa::path(put, path = "/v1/buckets/{bucket}", tag = "buckets",
    params(("bucket" = String, Path)),
    responses((status = 201, description = "Created", body = BucketBody),
        (status = 200, description = "It already exists", body = BucketBody),
        (status = 400, description = "A bad name", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    events::triggers::validate_bucket_name(&name).map_err(Error::Invalid)?;
    if let Ok(b) = crate::queries::find_bucket(&state, &tenant, &name).await {
        return Ok((
            StatusCode::OK,
            axum::Json(BucketBody {
                bucket: BucketView::from(&b),
            }),
        )
            .into_response());
    }
    let count = bucket::Entity::find()
        .filter(bucket::Column::TenantId.eq(&tenant.id))
        .count(&state.db)
        .await?;
    tenant.within("buckets", count, tenant.limits.max_buckets)?;
    let b = bucket::ActiveModel {
        id: Set(nimbus_core::new_id()),
        tenant_id: Set(tenant.id.clone()),
        name: Set(name.clone()),
        created_at: Set(nimbus_core::now_ms()),
        objects: Set(0),
    }
    .insert(&state.db)
    .await;
    match b {
        Ok(b) => Ok((
            StatusCode::CREATED,
            axum::Json(BucketBody {
                bucket: BucketView::from(&b),
            }),
        )
            .into_response()),
        // Created by a concurrent call.
        Err(e) if nimbus_core::db::is_unique_violation(&e) => {
            let b = crate::queries::find_bucket(&state, &tenant, &name).await?;
            Ok((
                StatusCode::OK,
                axum::Json(BucketBody {
                    bucket: BucketView::from(&b),
                }),
            )
                .into_response())
        }
        Err(e) => Err(Error::from(e).into()),
    }
}

/// `GET /v1/buckets`.
#[utoipa::path(get, path = "/v1/buckets", tag = "buckets",
    responses((status = 200, description = "The tenant's buckets", body = BucketList)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    let bs = bucket::Entity::find()
        .filter(bucket::Column::TenantId.eq(&tenant.id))
        .order_by_asc(bucket::Column::Name)
        .all(&state.db)
        .await
        .map_err(Error::from)?;
    Ok(axum::Json(BucketList {
        buckets: bs.iter().map(BucketView::from).collect(),
    })
    .into_response())
}

/// Fires the tenant's storage triggers for an object event.
async fn fire(
    state: &AppState,
    tenant_id: &str,
    ev: events::triggers::ObjectEvent,
) -> Result<usize, Error> {
    Ok(
        events::triggers::fire_storage(&state.db, &state.bus, &state.region.name, tenant_id, &ev)
            .await?,
    )
}

/// `PUT /v1/buckets/{bucket}/objects/{key}`: stores the body (at most 50 MiB) and fires
/// the bucket's `put` triggers.
#[utoipa::path(put, path = "/v1/buckets/{bucket}/objects/{key}", tag = "buckets",
    params(("bucket" = String, Path), ("key" = String, Path)),
    request_body(content = Vec<u8>, description = "The object's bytes", content_type = "application/octet-stream"),
    responses((status = 201, description = "Stored: bucket, key, size, eTag", body = ObjectStored),
        (status = 404, description = "No such bucket", body = ErrorBody),
        (status = 413, description = "Over 50 MiB", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_object(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    validate_key(&key)?;
    let b = crate::queries::find_bucket(&state, &tenant, &name).await?;
    let k = object_key(&tenant.id, &name, &key);
    let new = !state.store.exists(&k).await.map_err(Error::Internal)?;
    if new {
        let all: Vec<i64> = bucket::Entity::find()
            .filter(bucket::Column::TenantId.eq(&tenant.id))
            .all(&state.db)
            .await?
            .iter()
            .map(|b| b.objects)
            .collect();
        let count = all.iter().sum::<i64>().max(0) as u64;
        tenant.within("objects", count, tenant.limits.max_objects)?;
    }
    let bytes = axum::body::to_bytes(body, MAX_OBJECT).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            "an object is at most 50 MiB",
        )
    })?;
    let (size, tag) = (bytes.len() as u64, etag(&bytes));
    state.store.put(&k, bytes).await.map_err(Error::Internal)?;
    if new {
        count_objects(&state, &b.id, 1).await?;
    }
    let fired = fire(
        &state,
        &tenant.id,
        events::triggers::ObjectEvent {
            bucket: name.clone(),
            key: key.clone(),
            action: "put",
            size,
            etag: tag.clone(),
            at_ms: nimbus_core::now_ms(),
            source: "nimbus:s3".into(),
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ObjectStored {
            bucket: name,
            key,
            size,
            etag: tag,
            triggered: fired,
        }),
    )
        .into_response())
}

/// `GET /v1/buckets/{bucket}/objects/{key}`.
#[utoipa::path(get, path = "/v1/buckets/{bucket}/objects/{key}", tag = "buckets",
    params(("bucket" = String, Path), ("key" = String, Path)),
    responses((status = 200, description = "The object's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No such bucket or object", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_object(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    validate_key(&key)?;
    crate::queries::find_bucket(&state, &tenant, &name).await?;
    let bytes = state
        .store
        .get(&object_key(&tenant.id, &name, &key))
        .await
        .map_err(Error::Internal)?
        .ok_or_else(|| Error::not_found("Object", &key))?;
    let mut resp = Response::new(Body::from(bytes.clone()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", etag(&bytes))) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Adds `delta` to a bucket's object count (never below zero).
async fn count_objects(state: &AppState, bucket_id: &str, delta: i64) -> Result<(), Error> {
    use sea_orm::sea_query::{Expr, ExprTrait as _};
    bucket::Entity::update_many()
        .col_expr(
            bucket::Column::Objects,
            Expr::col(bucket::Column::Objects).add(delta),
        )
        .filter(bucket::Column::Id.eq(bucket_id))
        .filter(bucket::Column::Objects.gte(-std::cmp::Ord::min(delta, 0)))
        .exec(&state.db)
        .await?;
    Ok(())
}

/// `DELETE /v1/buckets/{bucket}/objects/{key}`: fires the bucket's `delete` triggers
/// if the object existed.
#[utoipa::path(delete, path = "/v1/buckets/{bucket}/objects/{key}", tag = "buckets",
    params(("bucket" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "Gone"),
        (status = 404, description = "No such bucket", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_object(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    validate_key(&key)?;
    crate::queries::find_bucket(&state, &tenant, &name).await?;
    let k = object_key(&tenant.id, &name, &key);
    let existed = state.store.exists(&k).await.map_err(Error::Internal)?;
    state.store.delete(&k).await.map_err(Error::Internal)?;
    if existed {
        let b = crate::queries::find_bucket(&state, &tenant, &name).await?;
        count_objects(&state, &b.id, -1).await?;
        fire(
            &state,
            &tenant.id,
            events::triggers::ObjectEvent {
                bucket: name,
                key,
                action: "delete",
                size: 0,
                etag: String::new(),
                at_ms: nimbus_core::now_ms(),
                source: "nimbus:s3".into(),
            },
        )
        .await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/events/s3`: S3 event notifications (the JSON S3 and MinIO webhooks
/// send) from an outside S3 server configured for the tenant. Each record fires the
/// tenant's storage triggers on that bucket, as the built-in bucket API does. The
/// bucket must be registered with `PUT /v1/buckets/{bucket}`.
#[utoipa::path(post, path = "/v1/events/s3", tag = "buckets",
    request_body(content = serde_json::Value, description = "{\"Records\": [{\"eventName\", \"s3\": {\"bucket\": {\"name\"}, \"object\": {\"key\", \"size\", \"eTag\"}}}]}"),
    responses((status = 202, description = "`{fired}`: invocations queued", body = Fired),
        (status = 400, description = "Not an S3 notification", body = ErrorBody),
        (status = 404, description = "A bucket the tenant does not have", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn s3_events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<Value>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let records = body["Records"]
        .as_array()
        .ok_or_else(|| Error::Invalid("an S3 notification has a Records list".into()))?;
    let mut events = Vec::new();
    for r in records {
        let name = r["eventName"].as_str().unwrap_or_default();
        let name = name.strip_prefix("s3:").unwrap_or(name);
        let action = if name.starts_with("ObjectCreated:") {
            "put"
        } else if name.starts_with("ObjectRemoved:") {
            "delete"
        } else {
            return Err(Error::Invalid(format!(
                "event '{name}' is not ObjectCreated:* or ObjectRemoved:*"
            ))
            .into());
        };
        let (Some(bucket), Some(key)) = (
            r["s3"]["bucket"]["name"].as_str(),
            r["s3"]["object"]["key"].as_str(),
        ) else {
            return Err(Error::Invalid(
                "each record needs s3.bucket.name and s3.object.key".into(),
            )
            .into());
        };
        crate::queries::find_bucket(&state, &tenant, bucket).await?;
        events.push(events::triggers::ObjectEvent {
            bucket: bucket.to_string(),
            key: events::triggers::percent_decode(key),
            action,
            size: r["s3"]["object"]["size"].as_u64().unwrap_or(0),
            etag: r["s3"]["object"]["eTag"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            at_ms: r["eventTime"]
                .as_str()
                .and_then(nimbus_core::parse_rfc3339)
                .unwrap_or_else(nimbus_core::now_ms),
            source: r["eventSource"].as_str().unwrap_or("aws:s3").to_string(),
        });
    }
    let mut fired = 0;
    for ev in events {
        fired += fire(&state, &tenant.id, ev).await?;
    }
    Ok((StatusCode::ACCEPTED, axum::Json(Fired { fired })).into_response())
}

/// Records that the tenant uses `queue`, within its `max_queues`.
async fn use_queue(state: &AppState, tenant: &TenantInfo, queue: &str) -> ApiResult<()> {
    use nimbus_core::db::tenant_queue;
    let key = (tenant.id.clone(), queue.to_string());
    if state.known_queues.contains_key(&key) {
        return Ok(());
    }
    let known = tenant_queue::Entity::find_by_id(key.clone())
        .one(&state.db)
        .await?
        .is_some();
    if !known {
        let count = tenant_queue::Entity::find()
            .filter(tenant_queue::Column::TenantId.eq(&tenant.id))
            .count(&state.db)
            .await?;
        tenant.within("queues", count, tenant.limits.max_queues)?;
        let r = tenant_queue::ActiveModel {
            tenant_id: Set(tenant.id.clone()),
            name: Set(queue.to_string()),
            created_at: Set(nimbus_core::now_ms()),
        }
        .insert(&state.db)
        .await;
        match r {
            Ok(_) => {}
            Err(e) if nimbus_core::db::is_unique_violation(&e) => {}
            Err(e) => return Err(Error::from(e).into()),
        }
    }
    state.known_queues.insert(key, ());
    Ok(())
}

/// `POST /v1/queues/{queue}/messages`: puts the body (at most 6 MiB) on the tenant's
/// queue; its queue trigger's function consumes it. Distributed, the queue is the
/// RabbitMQ queue named in the answer (`broker_queue`), which outside producers may
/// publish to directly.
#[utoipa::path(post, path = "/v1/queues/{queue}/messages", tag = "queues",
    params(("queue" = String, Path)),
    request_body(content = Vec<u8>, description = "The message", content_type = "application/octet-stream"),
    responses((status = 202, description = "Queued: `{queue, broker_queue}`", body = MessageQueued),
        (status = 400, description = "A bad queue name, or the tenant's max_queues reached", body = ErrorBody),
        (status = 413, description = "Over 6 MiB", body = ErrorBody),
        (status = 429, description = "The queue is full", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn send_message(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(queue): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    events::triggers::validate_queue_name(&queue).map_err(Error::Invalid)?;
    let bytes = axum::body::to_bytes(body, invoker::router::MAX_PAYLOAD)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "a message is at most 6 MiB",
            )
        })?;
    use_queue(&state, &tenant, &queue).await?;
    let name = events::triggers::tenant_queue(&tenant.id, &queue);
    state
        .bus
        .publish(&name, bytes.to_vec())
        .await
        .map_err(|e| match e {
            nimbus_core::bus::BusError::Full(_) => Error::TooManyRequests(format!(
                "queue '{queue}' holds {} messages, its limit; try again once its trigger has consumed some",
                nimbus_core::bus::TENANT_QUEUE_MAX_LENGTH
            ))
            .into(),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                e.to_string(),
            ),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(MessageQueued {
            broker_queue: format!("{}.{name}", state.bus_prefix),
            queue,
        }),
    )
        .into_response())
}
