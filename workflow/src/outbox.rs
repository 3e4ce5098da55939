//! The transactional outbox. A message is written in the same transaction as the
//! state change that causes it, then published; it is deleted only after the broker
//! confirmed it. A crash between commit and publish leaves the row, and the sweeper
//! publishes it later. Consumers are idempotent, so a message published twice (by the
//! writer and the sweeper racing) is harmless.

use nimbus_core::bus::DynBus;
use nimbus_core::db::{Batch, outbox};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

/// An outbox row: a message to publish.
pub use nimbus_core::db::outbox::Model as Message;

/// Prefix of a destination that is a broadcast topic rather than a work queue.
const TOPIC: &str = "topic:";

/// Adds a change event to the outbox: `kind` changed, for every cache that holds it.
/// Returns the row, for [`flush_rows`] after the commit.
pub async fn put_change(
    db: &impl ConnectionTrait,
    kind: proto::bus::change_event::Kind,
    tenant_id: &str,
    name: &str,
) -> Result<Message, sea_orm::DbErr> {
    insert(db, change_row(kind, tenant_id, name)).await
}

async fn insert(db: &impl ConnectionTrait, m: Message) -> Result<Message, sea_orm::DbErr> {
    outbox::Entity::insert(m.clone().into_active_model())
        .exec_without_returning(db)
        .await?;
    Ok(m)
}

/// Adds a message for a work queue to `batch`, due at `not_before` (epoch ms),
/// published with the trace context `traceparent`. Returns the row,
/// for [`flush_rows`] after the commit.
pub fn put_later(
    batch: &mut Batch,
    queue: &str,
    payload: Vec<u8>,
    not_before: i64,
    traceparent: Option<String>,
) -> Message {
    let m = row(queue.to_string(), payload, not_before, traceparent);
    batch.insert(m.clone().into_active_model());
    m
}

/// [`put_change`], with the insert added to `batch` instead of run now.
pub fn put_change_later(
    batch: &mut Batch,
    kind: proto::bus::change_event::Kind,
    tenant_id: &str,
    name: &str,
) -> Message {
    let m = change_row(kind, tenant_id, name);
    batch.insert(m.clone().into_active_model());
    m
}

/// A change event's row: a broadcast on the changes topic, due now.
fn change_row(kind: proto::bus::change_event::Kind, tenant_id: &str, name: &str) -> Message {
    use proto::Message as _;
    let payload = proto::bus::ChangeEvent {
        kind: kind as i32,
        tenant_id: tenant_id.to_string(),
        name: name.to_string(),
    }
    .encode_to_vec();
    row(
        format!("{TOPIC}{}", nimbus_core::bus::names::CHANGES),
        payload,
        0,
        None,
    )
}

/// A new outbox row.
fn row(
    destination: String,
    payload: Vec<u8>,
    not_before: i64,
    traceparent: Option<String>,
) -> Message {
    Message {
        id: nimbus_core::new_id(),
        destination,
        payload,
        not_before,
        created_at: nimbus_core::now_ms(),
        traceparent,
    }
}

/// Publishes rows this process wrote and committed (those that are due), as they
/// were written, and deletes them. Those not due yet, and any whose publish or
/// delete fails, are left for the sweeper.
pub async fn flush_rows(db: &DatabaseConnection, bus: &DynBus, rows: &[Message]) {
    let now = nimbus_core::now_ms();
    let due: Vec<Message> = rows
        .iter()
        .filter(|m| m.not_before <= now)
        .cloned()
        .collect();
    if !due.is_empty() {
        publish_and_delete(db, bus, &due).await;
    }
}

/// [`flush_rows`] without waiting: for request handlers, which must not stall on a
/// slow broker (the sweeper publishes whatever this misses).
pub fn flush_rows_in_background(db: &DatabaseConnection, bus: &DynBus, rows: Vec<Message>) {
    if rows.is_empty() {
        return;
    }
    let (db, bus) = (db.clone(), bus.clone());
    tokio::spawn(async move { flush_rows(&db, &bus, &rows).await });
}

/// Publishes `rows` in order until one fails, then deletes those published, in one
/// statement (on SQLite, in a turn at writing with the process's other writers).
/// A row published but not deleted (a crash in between) is published again by the
/// sweeper; consumers are idempotent.
async fn publish_and_delete(db: &DatabaseConnection, bus: &DynBus, rows: &[outbox::Model]) {
    let mut published = Vec::with_capacity(rows.len());
    for row in rows {
        if let Err(e) = publish(bus, row).await {
            tracing::warn!(error = %e, "outbox publish failed; the sweeper will retry");
            break;
        }
        published.push(row.id.clone());
    }
    if published.is_empty() {
        return;
    }
    let deleted = async {
        if db.get_database_backend() == DbBackend::Postgres {
            return delete(db, published).await;
        }
        // One statement, a turn of its own: one round trip, no savepoint.
        let mut w = Batch::new(DbBackend::Sqlite);
        w.push(
            outbox::Entity::delete_many()
                .filter(outbox::Column::Id.is_in(published))
                .build(DbBackend::Sqlite),
        );
        nimbus_core::db::group::write(db, w).await
    }
    .await;
    if let Err(e) = deleted {
        tracing::warn!(error = %e, "published outbox rows not deleted; they will be published again");
    }
}

async fn publish(bus: &DynBus, row: &outbox::Model) -> anyhow::Result<()> {
    match row.destination.strip_prefix(TOPIC) {
        Some(topic) => bus.broadcast(topic, row.payload.clone()).await?,
        None => {
            bus.publish_traced(
                &row.destination,
                row.payload.clone(),
                row.traceparent.clone(),
            )
            .await?
        }
    }
    crate::metrics::outbox_published(nimbus_core::now_ms() - row.not_before.max(row.created_at));
    Ok(())
}

async fn delete(db: &impl ConnectionTrait, ids: Vec<String>) -> Result<(), sea_orm::DbErr> {
    outbox::Entity::delete_many()
        .filter(outbox::Column::Id.is_in(ids))
        .exec(db)
        .await?;
    Ok(())
}

/// Publishes every due row. On PostgreSQL, rows are claimed with `FOR UPDATE SKIP
/// LOCKED`, so several sweepers share the work without publishing the same row twice.
/// On SQLite (one process) they are read, published, then deleted, without holding
/// the write lock while publishing.
pub async fn sweep(db: &DatabaseConnection, bus: &DynBus) -> anyhow::Result<usize> {
    let now = nimbus_core::now_ms();
    let due = || {
        outbox::Entity::find()
            .filter(outbox::Column::NotBefore.lte(now))
            .order_by_asc(outbox::Column::NotBefore)
            .limit(200)
    };
    if db.get_database_backend() != DbBackend::Postgres {
        let rows = due().all(db).await?;
        publish_and_delete(db, bus, &rows).await;
        return Ok(rows.len());
    }
    // A cheap read first: most sweeps find nothing, and need no transaction.
    if due().limit(1).all(db).await?.is_empty() {
        return Ok(0);
    }
    let txn = nimbus_core::db::begin_write(db).await?;
    let rows = due()
        .lock_with_behavior(
            sea_orm::sea_query::LockType::Update,
            sea_orm::sea_query::LockBehavior::SkipLocked,
        )
        .all(&txn)
        .await?;
    let n = rows.len();
    for row in &rows {
        publish(bus, row).await?;
        delete(&txn, vec![row.id.clone()]).await?;
    }
    txn.commit().await?;
    Ok(n)
}
