//! The resource service: the registry of compute nodes and the reservations of
//! provisioned concurrency on them.
//!
//! - [`Registry`]: nodes register and heartbeat their capacity; a node silent past
//!   `node_timeout_ms` is declared dead. Served over gRPC (`nimbus.node.Registry`).
//! - [`ResourceService`]: the step handler for `resource.reserve`, `resource.release`
//!   and the compensation `resource.restore`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::bus::DynBus;
use nimbus_core::config::ResourceConfig;
use nimbus_core::db::{node, reservation};
use nimbus_core::shutdown::Shutdown;
use nimbus_core::step::{self, Action, StepError, StepHandler, params};
use proto::bus::{Phase, StepCommand};
use proto::node::registry_server::RegistryServer;
use proto::node::{
    HeartbeatReply, HeartbeatRequest, ListNodesReply, ListNodesRequest, NodeCapacity, NodeInfo,
    RegisterReply, RegisterRequest, WarmPool,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, IntoActiveModel, QueryFilter, Set,
};
use serde_json::json;

/// Node states, as stored.
const ALIVE: &str = "Alive";
const DEAD: &str = "Dead";

/// Memory (MB) and instance slots reserved on a node.
fn reserved_on(node_id: &str, reservations: &[reservation::Model]) -> (i64, i32) {
    reservations
        .iter()
        .filter(|r| r.node_id == node_id)
        .fold((0, 0), |(m, s), r| {
            (m + r.memory_mb * r.instances as i64, s + r.instances)
        })
}

/// The node registry.
#[derive(Clone)]
pub struct Registry {
    /// Where nodes are recorded.
    db: DatabaseConnection,
    /// Heartbeat policy.
    cfg: ResourceConfig,
}

impl Registry {
    /// A registry over `db`.
    pub fn new(db: DatabaseConnection, cfg: ResourceConfig) -> Self {
        Registry { db, cfg }
    }

    /// Records a node (or refreshes it, if it restarted), alive as of now.
    pub async fn register(
        &self,
        req: RegisterRequest,
    ) -> Result<RegisterReply, nimbus_core::Error> {
        if req.node_id.is_empty() || req.address.is_empty() {
            return Err(nimbus_core::Error::Invalid(
                "node_id and address are required".into(),
            ));
        }
        let cap = req.capacity.unwrap_or_default();
        let now = nimbus_core::now_ms();
        let existing = node::Entity::find_by_id(req.node_id.clone())
            .one(&self.db)
            .await?;
        // A live node keeps its id: another process may not take it over (and send
        // its calls elsewhere) until it has missed its heartbeats.
        if let Some(n) = &existing
            && n.state == ALIVE
            && now - n.last_heartbeat < self.cfg.node_timeout_ms as i64
            && n.session != req.session
            && n.address != req.address
        {
            tracing::warn!(node = %req.node_id, address = %req.address, "refused a registration over a live node");
            return Err(nimbus_core::Error::Conflict(format!(
                "node {} is alive at another address",
                req.node_id
            )));
        }
        let model = node::ActiveModel {
            id: Set(req.node_id.clone()),
            address: Set(req.address),
            region: Set(req.region),
            zone: Set(req.zone),
            memory_mb: Set(cap.memory_mb as i64),
            slots: Set(cap.instance_slots as i32),
            used_memory_mb: Set(0),
            used_slots: Set(0),
            state: Set(ALIVE.into()),
            registered_at: Set(now),
            last_heartbeat: Set(now),
            warm: Set("[]".into()),
            cached_code: Set("[]".into()),
            session: Set(req.session),
        };
        match existing {
            Some(_) => {
                model.update(&self.db).await?;
            }
            None => {
                model.insert(&self.db).await?;
            }
        }
        tracing::info!(node = %req.node_id, "node registered");
        Ok(RegisterReply {
            heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
        })
    }

    /// Records a heartbeat. A node the registry does not know, or declared dead,
    /// is told to register again.
    pub async fn heartbeat(
        &self,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatReply, nimbus_core::Error> {
        let Some(n) = node::Entity::find_by_id(req.node_id.clone())
            .one(&self.db)
            .await?
        else {
            return Ok(HeartbeatReply { known: false });
        };
        if n.state == DEAD || n.session != req.session {
            return Ok(HeartbeatReply { known: false });
        }
        let used = req.used.unwrap_or_default();
        let mut am = n.into_active_model();
        am.used_memory_mb = Set(used.memory_mb as i64);
        am.used_slots = Set(used.instance_slots as i32);
        am.last_heartbeat = Set(nimbus_core::now_ms());
        let warm: Vec<serde_json::Value> = req
            .warm
            .iter()
            .map(|w| json!({"key": w.key, "idle": w.idle, "busy": w.busy}))
            .collect();
        am.warm = Set(serde_json::Value::from(warm).to_string());
        am.cached_code = Set(serde_json::Value::from(req.cached_code).to_string());
        am.update(&self.db).await?;
        Ok(HeartbeatReply { known: true })
    }

    /// Every node with its reservations; dead ones only if asked.
    pub async fn list(&self, include_dead: bool) -> Result<Vec<NodeInfo>, nimbus_core::Error> {
        let nodes = node::Entity::find().all(&self.db).await?;
        let reservations = reservation::Entity::find().all(&self.db).await?;
        Ok(nodes
            .into_iter()
            .filter(|n| include_dead || n.state == ALIVE)
            .map(|n| {
                let (mem, slots) = reserved_on(&n.id, &reservations);
                let warm: Vec<serde_json::Value> =
                    serde_json::from_str(&n.warm).unwrap_or_default();
                NodeInfo {
                    warm: warm
                        .iter()
                        .map(|w| WarmPool {
                            key: w["key"].as_str().unwrap_or_default().to_string(),
                            idle: w["idle"].as_u64().unwrap_or(0) as u32,
                            busy: w["busy"].as_u64().unwrap_or(0) as u32,
                        })
                        .collect(),
                    cached_code: serde_json::from_str(&n.cached_code).unwrap_or_default(),
                    alive: n.state == ALIVE,
                    capacity: Some(NodeCapacity {
                        memory_mb: n.memory_mb as u64,
                        instance_slots: n.slots as u32,
                    }),
                    used: Some(NodeCapacity {
                        memory_mb: n.used_memory_mb as u64,
                        instance_slots: n.used_slots as u32,
                    }),
                    reserved: Some(NodeCapacity {
                        memory_mb: mem as u64,
                        instance_slots: slots as u32,
                    }),
                    last_heartbeat_ms: n.last_heartbeat,
                    node_id: n.id,
                    address: n.address,
                    region: n.region,
                    zone: n.zone,
                }
            })
            .collect())
    }

    /// Declares dead every node silent past the timeout. Returns how many.
    pub async fn reap(&self) -> Result<u64, nimbus_core::Error> {
        let cutoff = nimbus_core::now_ms() - self.cfg.node_timeout_ms as i64;
        let r = node::Entity::update_many()
            .col_expr(node::Column::State, sea_orm::sea_query::Expr::value(DEAD))
            .filter(node::Column::State.eq(ALIVE))
            .filter(node::Column::LastHeartbeat.lt(cutoff))
            .exec(&self.db)
            .await?;
        if r.rows_affected > 0 {
            tracing::warn!(
                nodes = r.rows_affected,
                "nodes missed their heartbeats; declared dead"
            );
        }
        Ok(r.rows_affected)
    }
}

fn status(e: nimbus_core::Error) -> tonic::Status {
    match e {
        nimbus_core::Error::Invalid(m) => tonic::Status::invalid_argument(m),
        nimbus_core::Error::Conflict(m) => tonic::Status::already_exists(m),
        other => tonic::Status::unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl proto::node::registry_server::Registry for Registry {
    async fn register(
        &self,
        req: tonic::Request<RegisterRequest>,
    ) -> Result<tonic::Response<RegisterReply>, tonic::Status> {
        Registry::register(self, req.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(status)
    }

    async fn heartbeat(
        &self,
        req: tonic::Request<HeartbeatRequest>,
    ) -> Result<tonic::Response<HeartbeatReply>, tonic::Status> {
        Registry::heartbeat(self, req.into_inner())
            .await
            .map(tonic::Response::new)
            .map_err(status)
    }

    async fn list_nodes(
        &self,
        req: tonic::Request<ListNodesRequest>,
    ) -> Result<tonic::Response<ListNodesReply>, tonic::Status> {
        let nodes = self
            .list(req.into_inner().include_dead)
            .await
            .map_err(status)?;
        Ok(tonic::Response::new(ListNodesReply { nodes }))
    }
}

/// The step handler for capacity reservations.
pub struct ResourceService;

impl ResourceService {
    /// Sets the function's reserved instances to exactly `want`, placing them on alive
    /// nodes with room. All or nothing: in the caller's transaction.
    async fn reserve_exactly(
        txn: &DatabaseTransaction,
        tenant_id: &str,
        function_id: &str,
        want: u32,
        memory_mb: i64,
    ) -> Result<serde_json::Value, StepError> {
        let existing = reservation::Entity::find()
            .filter(reservation::Column::FunctionId.eq(function_id))
            .all(txn)
            .await?;
        let have: i32 = existing.iter().map(|r| r.instances).sum();
        if have == want as i32 && existing.iter().all(|r| r.memory_mb == memory_mb) {
            return Ok(json!({"provisioned": want, "placements": placements(&existing)}));
        }
        reservation::Entity::delete_many()
            .filter(reservation::Column::FunctionId.eq(function_id))
            .exec(txn)
            .await?;
        if want == 0 {
            return Ok(json!({"provisioned": 0, "placements": []}));
        }
        let nodes = node::Entity::find()
            .filter(node::Column::State.eq(ALIVE))
            .all(txn)
            .await?;
        let others = reservation::Entity::find().all(txn).await?;
        let mut free: Vec<(String, i64, i32)> = nodes
            .iter()
            .map(|n| {
                let (m, s) = reserved_on(&n.id, &others);
                (n.id.clone(), n.memory_mb - m, n.slots - s)
            })
            .collect();
        // Most free memory first: spreads reservations across nodes.
        free.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut left = want as i32;
        let now = nimbus_core::now_ms();
        let mut placed = Vec::new();
        for (node_id, mem, slots) in free {
            if left == 0 {
                break;
            }
            let fit = ((mem / memory_mb.max(1)) as i32).min(slots).min(left);
            if fit <= 0 {
                continue;
            }
            let r = reservation::ActiveModel {
                id: Set(nimbus_core::new_id()),
                function_id: Set(function_id.to_string()),
                tenant_id: Set(tenant_id.to_string()),
                node_id: Set(node_id),
                instances: Set(fit),
                memory_mb: Set(memory_mb),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            placed.push(r);
            left -= fit;
        }
        if left > 0 {
            // Rolling back the transaction undoes the partial placement.
            return Err(StepError::Permanent(format!(
                "not enough capacity for {want} provisioned instances of {memory_mb} MB: {} could not be placed",
                left
            )));
        }
        Ok(json!({"provisioned": want, "placements": placements(&placed)}))
    }
}

fn placements(rs: &[reservation::Model]) -> serde_json::Value {
    rs.iter()
        .map(|r| json!({"node": r.node_id, "instances": r.instances}))
        .collect()
}

async fn release_all(
    txn: &impl ConnectionTrait,
    function_id: &str,
) -> Result<serde_json::Value, StepError> {
    let r = reservation::Entity::delete_many()
        .filter(reservation::Column::FunctionId.eq(function_id))
        .exec(txn)
        .await?;
    Ok(json!({"released": r.rows_affected}))
}

#[async_trait]
impl StepHandler for ResourceService {
    fn service(&self) -> &'static str {
        "resource"
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
        let p = &p["params"];
        let function_id = p["function_id"]
            .as_str()
            .ok_or_else(|| StepError::Permanent("function_id missing".into()))?;
        let memory_mb = p["memory_mb"].as_i64().unwrap_or(128);
        match (cmd.phase(), Action::of(cmd)) {
            (Phase::Forward, Some(Action::Reserve)) => {
                let want = p["provisioned_concurrency"].as_u64().unwrap_or(0) as u32;
                Self::reserve_exactly(txn, &cmd.tenant_id, function_id, want, memory_mb).await
            }
            (_, Some(Action::Release)) => release_all(txn, function_id).await,
            (Phase::Compensate, Some(Action::Restore)) => {
                let want = p["previous_provisioned_concurrency"].as_u64().unwrap_or(0) as u32;
                let mem = p["previous_memory_mb"].as_i64().unwrap_or(memory_mb);
                match Self::reserve_exactly(txn, &cmd.tenant_id, function_id, want, mem).await {
                    // If the old capacity is gone too, releasing is the safe end state.
                    Err(StepError::Permanent(_)) => release_all(txn, function_id).await,
                    other => other,
                }
            }
            (phase, _) => Err(StepError::Permanent(format!(
                "resource service has no {phase:?} action '{}'",
                cmd.action
            ))),
        }
    }
}

/// Serves the registry on `listener`, the step commands on the bus, and the reaper,
/// until shutdown. With `token` (the region's internal token), every gRPC call must
/// carry it.
pub async fn run(
    cfg: ResourceConfig,
    token: Option<String>,
    db: DatabaseConnection,
    bus: DynBus,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let registry = Registry::new(db.clone(), cfg.clone());
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "node registry listening");
    let reaper = {
        let registry = registry.clone();
        let mut shutdown = shutdown.clone();
        let every = Duration::from_millis((cfg.node_timeout_ms / 2).max(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait() => return,
                }
                if let Err(e) = registry.reap().await {
                    tracing::warn!(error = %e, "reaper failed");
                }
            }
        })
    };
    let grpc = {
        let mut shutdown = shutdown.clone();
        tonic::transport::Server::builder()
            .add_service(RegistryServer::with_interceptor(
                registry,
                proto::auth::RequireToken::new(token.as_deref()),
            ))
            .serve_with_incoming_shutdown(proto::incoming(listener), async move {
                shutdown.wait().await
            })
    };
    let steps = step::serve(Arc::new(ResourceService), db, bus, 8, shutdown);
    let (g, s) = tokio::join!(grpc, steps);
    reaper.abort();
    g?;
    s?;
    Ok(())
}
