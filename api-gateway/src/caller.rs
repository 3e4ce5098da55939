//! Who is calling: the [`Caller`] (its key, role and tenant, verified by
//! [`crate::auth`]; extracted from each request in [`crate::extract`]) and the tenant
//! as requests see it.

use nimbus_core::Error;
use nimbus_core::db::tenant;
use nimbus_core::model::{Limits, Role};

use crate::error::ApiError;

/// A tenant as the request path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its limits.
    pub limits: Limits,
}

impl TenantInfo {
    /// Refuses one more `what` when the tenant has `count` of them and may have
    /// `limit`.
    pub fn within(&self, what: &str, count: u64, limit: u32) -> Result<(), Error> {
        if count >= limit as u64 {
            return Err(Error::LimitExceeded(format!(
                "tenant '{}' has reached its limit of {limit} {what}",
                self.name
            )));
        }
        Ok(())
    }
}

impl From<tenant::Model> for TenantInfo {
    fn from(t: tenant::Model) -> Self {
        TenantInfo {
            limits: Limits {
                max_concurrency: t.max_concurrency as u32,
                rate_per_sec: t.rate_per_sec as u32,
                max_functions: t.max_functions as u32,
                max_memory_mb: t.max_memory_mb as u32,
                max_queued_events: t.max_queued_events.max(0) as u32,
                max_queues: t.max_queues.max(0) as u32,
                max_buckets: t.max_buckets.max(0) as u32,
                max_triggers: t.max_triggers.max(0) as u32,
                max_objects: t.max_objects.max(0) as u32,
                monthly_gb_seconds: t.monthly_gb_seconds.map(|c| c.max(0) as u64),
                monthly_requests: t.monthly_requests.map(|c| c.max(0) as u64),
            },
            id: t.id,
            name: t.name,
        }
    }
}

/// Marks the routes that run functions (invoke, http triggers): they are throttled by
/// the concurrency quotas, not by the tenant's API call rate. Set as a route layer.
#[derive(Debug, Clone, Copy)]
pub struct ConcurrencyThrottled;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The API key (directly, or the JWT's subject).
    pub key_id: String,
    /// The role.
    pub role: Role,
    /// The caller's own tenant; None for admins.
    pub tenant: Option<TenantInfo>,
    /// For admins: the tenant named by `x-nimbus-tenant`, to act on its resources.
    pub acting_for: Option<TenantInfo>,
    /// Whether the credential was an API key (not a JWT).
    pub via_api_key: bool,
}

impl Caller {
    /// Fails with 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the {} role cannot do this; it needs {} or above",
                self.role.as_str(),
                role.as_str()
            ))
            .into())
        }
    }

    /// The tenant whose resources the call is about.
    pub fn tenant(&self) -> Result<&TenantInfo, ApiError> {
        self.tenant
            .as_ref()
            .or(self.acting_for.as_ref())
            .ok_or_else(|| {
                Error::Forbidden(
                    "an admin key has no tenant: name one with the x-nimbus-tenant header".into(),
                )
                .into()
            })
    }
}
