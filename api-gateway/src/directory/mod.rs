//! Identity — tenants, API keys (with their AWS pairs), roles, limits — and the
//! region catalogue: what is global across regions.
//!
//! Every identity change is a [`Write`], applied by [`apply_write`], which checks it
//! against what exists and turns it into [`Change`]s: whole rows after the change,
//! which [`store_change`] stores. Where identity lives decides who calls them:
//!
//! - one region (`nimbus up`, or no `directory.endpoint`): the gateway applies writes
//!   to its own database ([`Identity::Local`]);
//! - several regions: the global directory (`nimbus serve directory`, [`server`])
//!   applies them to its database and appends the changes to its log; every region's
//!   gateways follow the log and store each change in the region's database, their
//!   replica, which they authenticate from ([`replica`]). A gateway sends its admin
//!   writes to the directory and answers once its region has the change.

pub mod replica;
pub mod server;

use nimbus_core::Error;
use nimbus_core::db::{api_key, region, tenant, vpc};
use nimbus_core::model::Limits;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
};
use serde::{Deserialize, Serialize};

/// One identity write, as a gateway asks for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Write {
    /// A new tenant and its owner key. Sent again with the same owner key (a retry),
    /// it succeeds without a second tenant.
    CreateTenant {
        tenant: tenant::Model,
        owner: api_key::Model,
    },
    /// New limits for the tenant of this name.
    SetLimits { tenant: String, limits: Limits },
    /// Deletes the tenant of this name and its keys.
    DeleteTenant { tenant: String },
    /// A new key. Sent again (same id and secret), it succeeds once.
    CreateKey { key: api_key::Model },
    /// Revokes a key; with `tenant_id`, only if it belongs to that tenant.
    RevokeKey {
        id: String,
        tenant_id: Option<String>,
        at: i64,
    },
    /// Adds or updates a region in the catalogue.
    PutRegion { region: region::Model },
}

/// One change to identity: the row as it is after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A tenant, new or changed.
    Tenant { tenant: tenant::Model },
    /// A tenant deleted, with its keys.
    TenantDeleted { id: String },
    /// A key, new or revoked.
    Key { key: api_key::Model },
    /// A region, new or changed.
    Region { region: region::Model },
}

impl Change {
    /// The tenant it concerns, if any.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Change::Tenant { tenant } => Some(&tenant.id),
            Change::TenantDeleted { id } => Some(id),
            Change::Key { key } => key.tenant_id.as_deref(),
            Change::Region { .. } => None,
        }
    }
}

/// A new admin key's row (no tenant, no AWS pair: an admin has no functions to
/// reach through the Lambda-compatible API), and its token to show once.
pub fn admin_key_row(name: &str) -> (api_key::Model, String) {
    let key = crate::auth::generate_key();
    let row = api_key::Model {
        id: key.id,
        tenant_id: None,
        role: nimbus_core::model::Role::Admin.as_str().into(),
        name: name.into(),
        secret_sha256: key.secret_sha256,
        created_at: nimbus_core::now_ms(),
        revoked_at: None,
        aws_secret_sealed: None,
    };
    (row, key.token)
}

/// A tenant row.
pub fn tenant_row(id: String, name: String, limits: &Limits, created_at: i64) -> tenant::Model {
    let mut t = tenant::Model {
        id,
        name,
        created_at,
        max_concurrency: 0,
        rate_per_sec: 0,
        max_functions: 0,
        max_memory_mb: 0,
        max_queued_events: 0,
        max_queues: 0,
        max_buckets: 0,
        max_triggers: 0,
        max_objects: 0,
        monthly_gb_seconds: None,
        monthly_requests: None,
    };
    set_limits(&mut t, limits);
    t
}

fn set_limits(t: &mut tenant::Model, limits: &Limits) {
    t.max_concurrency = limits.max_concurrency as i32;
    t.rate_per_sec = limits.rate_per_sec as i32;
    t.max_functions = limits.max_functions as i32;
    t.max_memory_mb = limits.max_memory_mb as i32;
    t.max_queued_events = limits.max_queued_events as i32;
    t.max_queues = limits.max_queues as i32;
    t.max_buckets = limits.max_buckets as i32;
    t.max_triggers = limits.max_triggers as i32;
    t.max_objects = limits.max_objects as i32;
    t.monthly_gb_seconds = limits.monthly_gb_seconds.map(|c| c as i64);
    t.monthly_requests = limits.monthly_requests.map(|c| c as i64);
}

/// Checks `w` against what `db` holds, stores what it changes, and returns the
/// changes (none if it changes nothing: a repeated create, a second revocation).
/// Run it inside a transaction.
pub async fn apply_write<C: ConnectionTrait>(db: &C, w: Write) -> Result<Vec<Change>, Error> {
    let changes = match w {
        Write::CreateTenant { tenant, owner } => {
            let existing = tenant::Entity::find()
                .filter(tenant::Column::Name.eq(&tenant.name))
                .one(db)
                .await?;
            if let Some(t) = existing {
                let same = api_key::Entity::find_by_id(owner.id.clone())
                    .one(db)
                    .await?
                    .is_some_and(|k| k.tenant_id.as_ref() == Some(&t.id));
                if same {
                    return Ok(vec![]);
                }
                return Err(Error::Conflict(format!(
                    "tenant '{}' already exists",
                    tenant.name
                )));
            }
            vec![Change::Tenant { tenant }, Change::Key { key: owner }]
        }
        Write::SetLimits { tenant, limits } => {
            let mut t = tenant_named(db, &tenant).await?;
            set_limits(&mut t, &limits);
            vec![Change::Tenant { tenant: t }]
        }
        Write::DeleteTenant { tenant } => {
            let t = tenant_named(db, &tenant).await?;
            vec![Change::TenantDeleted { id: t.id }]
        }
        Write::CreateKey { key } => {
            if let Some(k) = api_key::Entity::find_by_id(key.id.clone()).one(db).await? {
                if k.secret_sha256 == key.secret_sha256 {
                    return Ok(vec![]);
                }
                return Err(Error::Conflict(format!("key '{}' already exists", key.id)));
            }
            if let Some(tid) = &key.tenant_id
                && tenant::Entity::find_by_id(tid.clone())
                    .one(db)
                    .await?
                    .is_none()
            {
                return Err(Error::not_found("Tenant", tid));
            }
            vec![Change::Key { key }]
        }
        Write::RevokeKey { id, tenant_id, at } => {
            let mut k = api_key::Entity::find_by_id(id.clone())
                .one(db)
                .await?
                .filter(|k| tenant_id.is_none() || k.tenant_id == tenant_id)
                .ok_or_else(|| Error::not_found("ApiKey", &id))?;
            if k.revoked_at.is_some() {
                return Ok(vec![]);
            }
            k.revoked_at = Some(at);
            vec![Change::Key { key: k }]
        }
        Write::PutRegion { region } => {
            let old = region::Entity::find_by_id(region.name.clone())
                .one(db)
                .await?;
            if old.is_some_and(|o| o.url == region.url && o.zones == region.zones) {
                return Ok(vec![]);
            }
            vec![Change::Region { region }]
        }
    };
    for c in &changes {
        // Two creates of one name at once: the second one's insert meets the first.
        store_change(db, c).await.map_err(|e| {
            if nimbus_core::db::is_unique_violation(&e) {
                Error::Conflict("it already exists (made at the same moment)".into())
            } else {
                e.into()
            }
        })?;
    }
    Ok(changes)
}

async fn tenant_named<C: ConnectionTrait>(db: &C, name: &str) -> Result<tenant::Model, Error> {
    tenant::Entity::find()
        .filter(tenant::Column::Name.eq(name))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("Tenant", name))
}

/// Stores one change: the directory after a write, and every region's replica as it
/// follows the log. Storing a change twice has the effect of storing it once.
pub async fn store_change<C: ConnectionTrait>(db: &C, c: &Change) -> Result<(), sea_orm::DbErr> {
    match c {
        Change::Tenant { tenant } => {
            let exists = tenant::Entity::find_by_id(tenant.id.clone())
                .one(db)
                .await?
                .is_some();
            put(db, tenant.clone().into_active_model(), exists).await?;
        }
        Change::TenantDeleted { id } => {
            api_key::Entity::delete_many()
                .filter(api_key::Column::TenantId.eq(id))
                .exec(db)
                .await?;
            vpc::Entity::delete_by_id(id.clone()).exec(db).await?;
            tenant::Entity::delete_by_id(id.clone()).exec(db).await?;
        }
        Change::Key { key } => {
            let exists = api_key::Entity::find_by_id(key.id.clone())
                .one(db)
                .await?
                .is_some();
            put(db, key.clone().into_active_model(), exists).await?;
        }
        Change::Region { region } => {
            let exists = region::Entity::find_by_id(region.name.clone())
                .one(db)
                .await?
                .is_some();
            put(db, region.clone().into_active_model(), exists).await?;
        }
    }
    Ok(())
}

/// Inserts a row, or overwrites every column of the row that exists.
async fn put<C, A>(db: &C, am: A, exists: bool) -> Result<(), sea_orm::DbErr>
where
    C: ConnectionTrait,
    A: ActiveModelTrait + sea_orm::ActiveModelBehavior + Send,
    <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
{
    let am = am.reset_all();
    if exists {
        am.update(db).await?;
    } else {
        am.insert(db).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::model::Role;

    async fn db() -> sea_orm::DatabaseConnection {
        nimbus_core::db::connect(&nimbus_core::config::DatabaseConfig {
            url: "sqlite::memory:".into(),
            schema: None,
            max_connections: 1,
            log_statements: false,
        })
        .await
        .unwrap()
    }

    fn key(id: &str, tenant: Option<&str>) -> api_key::Model {
        api_key::Model {
            id: id.into(),
            tenant_id: tenant.map(str::to_string),
            role: Role::Owner.as_str().into(),
            name: "k".into(),
            secret_sha256: format!("sha-{id}"),
            created_at: 1,
            revoked_at: None,
            aws_secret_sealed: None,
        }
    }

    /// The writes' rules, and a replica that stores the changes ends up equal.
    #[tokio::test]
    async fn writes_become_changes_a_replica_stores() {
        let (dir, replica) = (db().await, db().await);
        let mut log = vec![];
        let t = tenant_row("t1".into(), "acme".into(), &Limits::default(), 1);
        let create = Write::CreateTenant {
            tenant: t.clone(),
            owner: key("k1", Some("t1")),
        };
        log.extend(apply_write(&dir, create.clone()).await.unwrap());
        assert_eq!(log.len(), 2);
        // A retry of the same create is no change; another owner is a conflict.
        assert!(apply_write(&dir, create).await.unwrap().is_empty());
        let other = Write::CreateTenant {
            tenant: tenant_row("t2".into(), "acme".into(), &Limits::default(), 1),
            owner: key("k2", Some("t2")),
        };
        assert!(matches!(
            apply_write(&dir, other).await,
            Err(Error::Conflict(_))
        ));
        // A key for a tenant that does not exist.
        let orphan = Write::CreateKey {
            key: key("k3", Some("nope")),
        };
        assert!(matches!(
            apply_write(&dir, orphan).await,
            Err(Error::NotFound { .. })
        ));
        let limits = Limits {
            rate_per_sec: 7,
            ..Limits::default()
        };
        log.extend(
            apply_write(
                &dir,
                Write::SetLimits {
                    tenant: "acme".into(),
                    limits,
                },
            )
            .await
            .unwrap(),
        );
        // Revoking: another tenant's key is not found; twice is one change.
        let revoke = |tenant: Option<&str>| Write::RevokeKey {
            id: "k1".into(),
            tenant_id: tenant.map(str::to_string),
            at: 5,
        };
        assert!(apply_write(&dir, revoke(Some("t9"))).await.is_err());
        log.extend(apply_write(&dir, revoke(Some("t1"))).await.unwrap());
        assert!(apply_write(&dir, revoke(None)).await.unwrap().is_empty());
        // The replica stores the log (twice over: storing is idempotent).
        for c in log.iter().chain(log.iter()) {
            store_change(&replica, c).await.unwrap();
        }
        let t = tenant::Entity::find_by_id("t1".to_string())
            .one(&replica)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t.rate_per_sec, 7);
        let k = api_key::Entity::find_by_id("k1".to_string())
            .one(&replica)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(k.revoked_at, Some(5));
        // Deleting the tenant takes its keys.
        let gone = apply_write(
            &dir,
            Write::DeleteTenant {
                tenant: "acme".into(),
            },
        )
        .await
        .unwrap();
        for c in &gone {
            store_change(&replica, c).await.unwrap();
        }
        assert!(
            api_key::Entity::find_by_id("k1".to_string())
                .one(&replica)
                .await
                .unwrap()
                .is_none()
        );
    }
}
