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
