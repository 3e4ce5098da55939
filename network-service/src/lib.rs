//! The network service: each tenant's VPC record (which egress is allowed) and its
//! egress-proxy endpoint. The endpoint is allocated once, on the first function that
//! needs it, and shared by all the tenant's instances, so attaching an instance to its
//! network costs nothing at cold start (seed 002). The proxy that enforces the egress
//! list runs with the data path.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use nimbus_core::config::NetworkConfig;
use nimbus_core::db::{function, vpc};
use nimbus_core::step::{Action, StepError, StepHandler, params};
use proto::bus::{Phase, StepCommand};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A tenant's network, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vpc {
    /// CIDRs or host names the tenant's functions may reach. Empty: no egress.
    pub egress: Vec<String>,
    /// The shared egress proxy, once allocated.
    pub proxy_endpoint: Option<String>,
}

/// Checks an egress list: CIDRs (`10.0.0.0/8`) or host names (`api.example.com`).
pub fn validate_egress(egress: &[String]) -> Result<(), nimbus_core::Error> {
    if egress.len() > 64 {
        return Err(nimbus_core::Error::Invalid(
            "at most 64 egress rules".into(),
        ));
    }
    for rule in egress {
        let ok = match rule.split_once('/') {
            Some((ip, bits)) => {
                ip.parse::<std::net::IpAddr>().is_ok()
                    && bits
                        .parse::<u8>()
                        .is_ok_and(|b| b <= if ip.contains(':') { 128 } else { 32 })
            }
            None => {
                rule.parse::<std::net::IpAddr>().is_ok()
                    || (!rule.is_empty()
                        && rule.len() <= 253
                        && rule.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        }))
            }
        };
        if !ok {
            return Err(nimbus_core::Error::Invalid(format!(
                "egress rule '{rule}' is neither a CIDR, an IP address nor a host name"
            )));
        }
    }
    Ok(())
}

/// The tenant's network, if it has one.
pub async fn get(
    db: &impl ConnectionTrait,
    tenant_id: &str,
) -> Result<Option<Vpc>, nimbus_core::Error> {
    Ok(vpc::Entity::find_by_id(tenant_id.to_string())
        .one(db)
        .await?
        .map(to_vpc))
}

/// Sets the tenant's egress rules (creating the record if needed).
pub async fn set_egress(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    egress: Vec<String>,
) -> Result<Vpc, nimbus_core::Error> {
    validate_egress(&egress)?;
    let egress: BTreeSet<String> = egress.into_iter().collect();
    let egress_json = serde_json::to_string(&egress).map_err(anyhow::Error::from)?;
    let now = nimbus_core::now_ms();
    let model = match vpc::Entity::find_by_id(tenant_id.to_string())
        .one(db)
        .await?
    {
        Some(v) => {
            let mut am = v.into_active_model();
            am.egress = Set(egress_json);
            am.updated_at = Set(now);
            am.update(db).await?
        }
        None => {
            vpc::ActiveModel {
                tenant_id: Set(tenant_id.to_string()),
                egress: Set(egress_json),
                proxy_endpoint: Set(None),
                proxy_port: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(db)
            .await?
        }
    };
    Ok(to_vpc(model))
}

fn to_vpc(m: vpc::Model) -> Vpc {
    Vpc {
        egress: serde_json::from_str(&m.egress).unwrap_or_default(),
        proxy_endpoint: m.proxy_endpoint,
    }
}

/// The network service's step handler.
pub struct NetworkService {
    /// Where proxies listen.
    cfg: NetworkConfig,
}

impl NetworkService {
    /// A handler allocating proxies per `cfg`.
    pub fn new(cfg: NetworkConfig) -> Arc<Self> {
        Arc::new(NetworkService { cfg })
    }

    /// `network.ensure`: the tenant's VPC exists and has a proxy endpoint.
    async fn ensure(
        &self,
        txn: &DatabaseTransaction,
        tenant_id: &str,
    ) -> Result<serde_json::Value, StepError> {
        let now = nimbus_core::now_ms();
        let current = vpc::Entity::find_by_id(tenant_id.to_string())
            .one(txn)
            .await?;
        if let Some(v) = &current
            && let Some(ep) = &v.proxy_endpoint
        {
            return Ok(json!({"proxy_endpoint": ep, "allocated": false}));
        }
        let used: BTreeSet<i32> = vpc::Entity::find()
            .all(txn)
            .await?
            .into_iter()
            .filter_map(|v| v.proxy_port)
            .collect();
        let base = self.cfg.proxy_port_base as i32;
        let port = (base..base + self.cfg.proxy_port_count as i32)
            .find(|p| !used.contains(p))
            .ok_or_else(|| {
                StepError::Permanent("no egress-proxy port is free in this region".into())
            })?;
        let endpoint = format!("{}:{port}", self.cfg.proxy_host);
        // A concurrent allocation of the same port fails on the unique endpoint and
        // rolls back; the workflow retries the step.
        match current {
            Some(v) => {
                let mut am = v.into_active_model();
                am.proxy_endpoint = Set(Some(endpoint.clone()));
                am.proxy_port = Set(Some(port));
                am.updated_at = Set(now);
                am.update(txn).await?;
            }
            None => {
                vpc::ActiveModel {
                    tenant_id: Set(tenant_id.to_string()),
                    egress: Set("[]".into()),
                    proxy_endpoint: Set(Some(endpoint.clone())),
                    proxy_port: Set(Some(port)),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(txn)
                .await?;
            }
        }
        tracing::info!(tenant = tenant_id, %endpoint, "egress proxy allocated");
        Ok(json!({"proxy_endpoint": endpoint, "allocated": true}))
    }

    /// `network.release`: frees the proxy when no other function of the tenant remains.
    async fn release(
        &self,
        txn: &DatabaseTransaction,
        tenant_id: &str,
        function_id: &str,
    ) -> Result<serde_json::Value, StepError> {
        let others = function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant_id))
            .filter(function::Column::Id.ne(function_id))
            .count(txn)
            .await?;
        if others > 0 {
            return Ok(json!({"released": false, "functions_left": others}));
        }
        if let Some(v) = vpc::Entity::find_by_id(tenant_id.to_string())
            .one(txn)
            .await?
            && v.proxy_endpoint.is_some()
        {
            let mut am = v.into_active_model();
            am.proxy_endpoint = Set(None);
            am.proxy_port = Set(None);
            am.updated_at = Set(nimbus_core::now_ms());
            am.update(txn).await?;
            tracing::info!(tenant = tenant_id, "egress proxy released");
            return Ok(json!({"released": true}));
        }
        Ok(json!({"released": false}))
    }
}

#[async_trait]
impl StepHandler for NetworkService {
    fn service(&self) -> &'static str {
        "network"
    }

    /// Its steps only read and write the database.
    fn runs_inline(&self, _cmd: &StepCommand) -> bool {
        true
    }

    async fn handle(
        &self,
        txn: &DatabaseTransaction,
        cmd: &StepCommand,
        _prepared: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, StepError> {
        let p = params(cmd)?;
        let function_id = p["params"]["function_id"].as_str().unwrap_or_default();
        match (cmd.phase(), Action::of(cmd)) {
            (Phase::Forward, Some(Action::Ensure)) => self.ensure(txn, &cmd.tenant_id).await,
            (_, Some(Action::Release)) => self.release(txn, &cmd.tenant_id, function_id).await,
            (phase, _) => Err(StepError::Permanent(format!(
                "network service has no {phase:?} action '{}'",
                cmd.action
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules() {
        assert!(
            validate_egress(&[
                "10.0.0.0/8".into(),
                "api.example.com".into(),
                "1.2.3.4".into()
            ])
            .is_ok()
        );
        assert!(validate_egress(&["10.0.0.0/33".into()]).is_err());
        assert!(validate_egress(&["bad host!".into()]).is_err());
    }
}
