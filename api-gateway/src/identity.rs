//! Identity writes (tenants, keys, limits), wherever identity lives: the region's own
//! database, or the global directory (see [`crate::directory`]). Either way the
//! gateway then drops what it cached of what changed.

use nimbus_core::Error;
use proto::bus::change_event;

use crate::AppState;
use crate::directory::replica::Identity;
use crate::directory::{Change, Write, apply_write};

/// Applies `w` and answers its changes (none if it changed nothing).
pub async fn write(state: &AppState, w: Write) -> Result<Vec<Change>, Error> {
    match &state.identity {
        Identity::Local => {
            let txn = nimbus_core::db::begin_write(&state.db).await?;
            let changes = apply_write(&txn, w).await?;
            txn.commit().await?;
            for c in &changes {
                touched(state, c).await;
                // Other gateways of the region hear of it on the bus.
                match c {
                    Change::Key { key } if key.revoked_at.is_some() => {
                        let tenant = key.tenant_id.as_deref().unwrap_or_default();
                        crate::queries::announce(
                            state,
                            change_event::Kind::ApiKey,
                            tenant,
                            &key.id,
                        )
                        .await?;
                    }
                    Change::Tenant { tenant: t } => {
                        crate::queries::announce(state, change_event::Kind::Tenant, &t.id, &t.id)
                            .await?;
                    }
                    Change::TenantDeleted { id } => {
                        crate::queries::announce(state, change_event::Kind::Tenant, id, id).await?;
                    }
                    Change::Key { .. } | Change::Region { .. } => {}
                }
            }
            Ok(changes)
        }
        Identity::Directory(replica) => {
            let changes = replica.write(w).await?;
            for c in &changes {
                touched(state, c).await;
            }
            Ok(changes)
        }
    }
}

/// With a global directory: checks that no other region in the catalogue holds
/// functions of tenant `name`, asking each region's API with the admin's own
/// `credentials` (an `Authorization` value; identity is global, so it works there).
/// 409 naming the region that has some; 503 if a region cannot be asked.
pub async fn other_regions_have_none(
    state: &AppState,
    name: &str,
    credentials: &str,
) -> Result<(), Error> {
    use nimbus_core::db::region;
    use sea_orm::EntityTrait;
    if matches!(state.identity, Identity::Local) {
        return Ok(());
    }
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Internal(e.into()))?;
    for r in region::Entity::find().all(&state.db).await? {
        if r.name == state.region.name {
            continue;
        }
        let cannot = |why: String| {
            Error::Unavailable(format!(
                "cannot confirm that region {} has none of tenant '{name}''s functions ({why}); \
                 nothing was deleted",
                r.name
            ))
        };
        let resp = http
            .get(format!("{}/v1/functions", r.url.trim_end_matches('/')))
            .header(reqwest::header::AUTHORIZATION, credentials)
            .header("x-nimbus-tenant", name)
            .send()
            .await
            .map_err(|e| cannot(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(cannot(format!("it answered {}", resp.status())));
        }
        let body: serde_json::Value = resp.json().await.map_err(|e| cannot(e.to_string()))?;
        let n = body["functions"].as_array().map_or(0, Vec::len);
        if n > 0 {
            return Err(Error::Conflict(format!(
                "tenant '{name}' still has {n} functions in region {}; delete them first",
                r.name
            )));
        }
    }
    Ok(())
}

/// Drops what this gateway cached of what `c` changed.
pub async fn touched(state: &AppState, c: &Change) {
    match c {
        Change::Key { key } => state.auth.evict_key(&key.id).await,
        Change::Tenant { tenant: t } => tenant_touched(state, &t.id),
        Change::TenantDeleted { id } => tenant_touched(state, id),
        Change::Region { .. } => {}
    }
}

fn tenant_touched(state: &AppState, id: &str) {
    state.auth.evict_tenant(id);
    state.routes.invalidate_all();
    if let Some(dp) = &state.data_path {
        dp.router.invalidate_tenant(id);
    }
}
