//! Look-ups and notices that several handlers share: a tenant, a function or a
//! bucket by name (404 when it is not the caller's), and change announcements.

use nimbus_core::Error;
use nimbus_core::db::{alias, bucket, function, tenant, version};
use nimbus_core::model;
use proto::bus::change_event;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::AppState;
use crate::caller::TenantInfo;

/// A tenant by name, or 404.
pub async fn tenant_by_name(db: &impl ConnectionTrait, name: &str) -> Result<tenant::Model, Error> {
    tenant::Entity::find()
        .filter(tenant::Column::Name.eq(name))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("Tenant", name))
}

/// Broadcasts a change event through the outbox (so it survives a crash) and flushes it.
pub async fn announce(
    state: &AppState,
    kind: change_event::Kind,
    tenant_id: &str,
    name: &str,
) -> Result<(), Error> {
    let change = workflow::outbox::put_change(&state.db, kind, tenant_id, name).await?;
    workflow::outbox::flush_rows_in_background(&state.db, &state.bus, vec![change]);
    Ok(())
}

/// The tenant's function `name`, or 404.
pub async fn find_function(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &TenantInfo,
    name: &str,
) -> Result<function::Model, Error> {
    model::validate_name("function", name).map_err(|_| Error::not_found("Function", name))?;
    function::Entity::find()
        .filter(function::Column::TenantId.eq(&tenant.id))
        .filter(function::Column::Name.eq(name))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("Function", name))
}

/// A function's published versions, oldest first.
pub async fn versions_of(
    db: &impl ConnectionTrait,
    function_id: &str,
) -> Result<Vec<version::Model>, DbErr> {
    version::Entity::find()
        .filter(version::Column::FunctionId.eq(function_id))
        .order_by_asc(version::Column::Version)
        .all(db)
        .await
}

/// A function's version `number`, if it was published.
pub async fn version_of(
    db: &impl ConnectionTrait,
    function_id: &str,
    number: i32,
) -> Result<Option<version::Model>, DbErr> {
    version::Entity::find()
        .filter(version::Column::FunctionId.eq(function_id))
        .filter(version::Column::Version.eq(number))
        .one(db)
        .await
}

/// A function's aliases, by name.
pub async fn aliases_of(
    db: &impl ConnectionTrait,
    function_id: &str,
) -> Result<Vec<alias::Model>, DbErr> {
    alias::Entity::find()
        .filter(alias::Column::FunctionId.eq(function_id))
        .order_by_asc(alias::Column::Name)
        .all(db)
        .await
}

/// A function's alias `name`, if it has one.
pub async fn alias_of(
    db: &impl ConnectionTrait,
    function_id: &str,
    name: &str,
) -> Result<Option<alias::Model>, DbErr> {
    alias::Entity::find()
        .filter(alias::Column::FunctionId.eq(function_id))
        .filter(alias::Column::Name.eq(name))
        .one(db)
        .await
}

/// The tenant's bucket `name`, or 404.
pub async fn find_bucket(
    state: &AppState,
    tenant: &TenantInfo,
    name: &str,
) -> Result<bucket::Model, Error> {
    bucket::Entity::find()
        .filter(bucket::Column::TenantId.eq(&tenant.id))
        .filter(bucket::Column::Name.eq(name))
        .one(&state.db)
        .await?
        .ok_or_else(|| Error::not_found("Bucket", name))
}

/// Whether the tenant has the bucket (for storage triggers).
pub async fn bucket_exists(
    state: &AppState,
    tenant: &TenantInfo,
    name: &str,
) -> Result<bool, Error> {
    match find_bucket(state, tenant, name).await {
        Ok(_) => Ok(true),
        Err(Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
