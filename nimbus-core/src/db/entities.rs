//! One module per table.

/// Tenants and their limits.
pub mod tenant {
    use sea_orm::entity::prelude::*;

    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize,
    )]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique)]
        pub name: String,
        pub max_concurrency: i32,
        pub rate_per_sec: i32,
        pub max_functions: i32,
        pub max_memory_mb: i32,
        pub created_at: i64,
        #[sea_orm(default_value = 10000)]
        pub max_queued_events: i32,
        #[sea_orm(default_value = 100)]
        pub max_queues: i32,
        #[sea_orm(default_value = 100)]
        pub max_buckets: i32,
        #[sea_orm(default_value = 200)]
        pub max_triggers: i32,
        #[sea_orm(default_value = 100000)]
        pub max_objects: i32,
        /// Monthly caps; None: no cap.
        pub monthly_gb_seconds: Option<i64>,
        pub monthly_requests: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// API keys. Only the SHA-256 of the secret is stored.
pub mod api_key {
    use sea_orm::entity::prelude::*;

    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize,
    )]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// None for platform admins.
        #[sea_orm(indexed)]
        pub tenant_id: Option<String>,
        pub role: String,
        pub name: String,
        pub secret_sha256: String,
        pub created_at: i64,
        pub revoked_at: Option<i64>,
        /// The secret of the key's AWS access-key pair (for Signature V4 on the
        /// Lambda-compatible API), sealed to the key: it must be recoverable to check
        /// signatures. Its access key id is derived from the key id. None for keys
        /// made before pairs existed.
        pub aws_secret_sealed: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Functions: the `$LATEST` draft and its state.
pub mod function {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "functions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique_key = "tenant_name")]
        pub tenant_id: String,
        #[sea_orm(unique_key = "tenant_name")]
        pub name: String,
        pub runtime: String,
        pub handler: String,
        pub memory_mb: i32,
        pub timeout_ms: i32,
        /// JSON object of environment variables.
        pub env: String,
        pub state: String,
        pub state_reason: Option<String>,
        pub code_sha256: Option<String>,
        pub code_size: i64,
        pub latest_version: i32,
        pub online: bool,
        pub reserved_concurrency: Option<i32>,
        pub provisioned_concurrency: i32,
        /// JSON of the async settings.
        pub async_config: String,
        /// The task now changing this function, if any: one change at a time.
        pub pending_task: Option<String>,
        /// Bumped by every committed change: lets caches tell old from new.
        pub revision: i64,
        /// "resident" (instances serve call after call) or "one-shot".
        #[sea_orm(default_value = "resident")]
        pub process_model: String,
        /// What provisioned concurrency and warm-ups keep started: `$LATEST`, a
        /// version number, or an alias (its main version).
        #[sea_orm(default_value = "$LATEST")]
        pub provisioned_qualifier: String,
        /// JSON array of scheduled warm-ups (`model::ScheduledWarmup`).
        #[sea_orm(default_value = "[]")]
        pub warmups: String,
        /// A description, as the Lambda-compatible API keeps it.
        #[sea_orm(default_value = "")]
        pub description: String,
        /// The execution role ARN given through the Lambda-compatible API: kept and
        /// shown, not used.
        pub role: Option<String>,
        /// The runtime's name as the Lambda-compatible API was given it (e.g.
        /// `python3.12`), shown back the same; `runtime` is what runs it.
        pub runtime_name: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Published versions: immutable snapshots.
pub mod version {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "versions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique_key = "fn_version")]
        pub function_id: String,
        #[sea_orm(unique_key = "fn_version")]
        pub version: i32,
        pub description: String,
        pub runtime: String,
        pub handler: String,
        pub memory_mb: i32,
        pub timeout_ms: i32,
        pub env: String,
        pub code_sha256: String,
        pub code_size: i64,
        pub created_at: i64,
        /// "resident" or "one-shot".
        #[sea_orm(default_value = "resident")]
        pub process_model: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Aliases: a name pointing at one version, plus weighted extra versions.
pub mod alias {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "aliases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique_key = "fn_alias")]
        pub function_id: String,
        #[sea_orm(unique_key = "fn_alias")]
        pub name: String,
        pub version: String,
        /// JSON object version → weight.
        pub additional_weights: String,
        pub description: String,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Workflow tasks.
pub mod task {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(indexed)]
        pub tenant_id: String,
        pub kind: String,
        pub function_id: String,
        pub function_name: String,
        pub state: String,
        /// The step now running (forward or compensating).
        pub cursor: i32,
        /// "forward" or "compensate".
        pub phase: String,
        /// JSON: the request's parameters.
        pub params: String,
        /// JSON: outputs of finished steps, merged.
        pub context: String,
        pub error: Option<String>,
        pub request_id: String,
        pub created_at: i64,
        pub updated_at: i64,
        pub finished_at: Option<i64>,
        /// The trace context of the request that started it (W3C `traceparent`).
        pub traceparent: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The steps of a task.
pub mod task_step {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "task_steps")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        pub service: String,
        pub action: String,
        pub compensation: Option<String>,
        pub state: String,
        pub attempts: i32,
        /// Attempts of the compensation, when it ran.
        pub comp_attempts: i32,
        pub error: Option<String>,
        /// When the current command was sent: a step silent past the timeout is resent.
        pub sent_at: Option<i64>,
        pub finished_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The transactional outbox: messages committed with the state change that caused
/// them, published by the relay, deleted once the broker confirmed.
pub mod outbox {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Queue name (without prefix), or `topic:NAME` for a broadcast.
        pub destination: String,
        pub payload: Vec<u8>,
        /// Not published before this time (retry backoff).
        #[sea_orm(indexed)]
        pub not_before: i64,
        pub created_at: i64,
        /// The trace context the message is published with.
        pub traceparent: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What each step handler did per idempotency key, so a redelivery replays the result.
pub mod step_record {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "step_records")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub service: String,
        /// The encoded StepResult.
        pub result: Vec<u8>,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Compute nodes, as registered with resource-service.
pub mod node {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "nodes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub address: String,
        pub region: String,
        pub zone: String,
        pub memory_mb: i64,
        pub slots: i32,
        pub used_memory_mb: i64,
        pub used_slots: i32,
        /// "Alive" or "Dead".
        pub state: String,
        pub registered_at: i64,
        pub last_heartbeat: i64,
        /// JSON list of `{key, idle, busy}` pools, as of the last heartbeat.
        #[sea_orm(default_value = "[]")]
        pub warm: String,
        /// JSON list of the code digests cached on the node.
        #[sea_orm(default_value = "[]")]
        pub cached_code: String,
        /// The registering process's session (see `RegisterRequest.session`).
        #[sea_orm(default_value = "")]
        pub session: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Capacity reserved on a node for a function's provisioned concurrency.
pub mod reservation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(indexed)]
        pub function_id: String,
        pub tenant_id: String,
        #[sea_orm(indexed)]
        pub node_id: String,
        pub instances: i32,
        pub memory_mb: i64,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A tenant's network: allowed egress, and the shared egress proxy.
pub mod vpc {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "vpcs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        /// JSON array of CIDRs or host names the tenant's functions may reach.
        pub egress: String,
        /// host:port of the egress proxy, allocated on first use.
        #[sea_orm(unique)]
        pub proxy_endpoint: Option<String>,
        pub proxy_port: Option<i32>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What functions printed, per line.
pub mod log_line {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "function_logs")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(indexed)]
        pub tenant_id: String,
        pub function_name: String,
        #[sea_orm(indexed)]
        pub timestamp_ms: i64,
        pub request_id: String,
        /// "stdout" or "stderr".
        pub stream: String,
        pub node_id: String,
        pub message: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Asynchronous invocations: the durable record of each event, its attempts and its
/// outcome. The queue carries only ids; this row is the truth.
pub mod invocation {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "invocations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(indexed)]
        pub tenant_id: String,
        #[sea_orm(indexed)]
        pub function_name: String,
        pub qualifier: Option<String>,
        pub event: Vec<u8>,
        /// Queued, Running, Succeeded, Failed or DeadLettered.
        #[sea_orm(indexed)]
        pub state: String,
        pub attempts: i32,
        pub result: Option<Vec<u8>>,
        /// The last error document (JSON).
        pub error: Option<String>,
        /// JSON array of `{attempt, at, error}`.
        pub errors: String,
        pub executed_version: Option<String>,
        /// Not to run before (epoch ms): retries wait here.
        #[sea_orm(indexed)]
        pub due_at: i64,
        /// When its id was last put on the queue; None: to publish.
        pub published_at: Option<i64>,
        pub started_at: Option<i64>,
        pub finished_at: Option<i64>,
        /// "api", "replay", "on_success" or "on_failure".
        pub origin: String,
        /// The dead letter this one replays.
        pub replay_of: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
        /// The trace context of the request that queued it: each attempt
        /// continues that trace.
        pub traceparent: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Triggers: what starts a function besides a direct call.
pub mod trigger {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "triggers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(indexed, unique_key = "tenant_route")]
        pub tenant_id: String,
        pub function_name: String,
        /// "http" or "timer".
        #[sea_orm(indexed)]
        pub kind: String,
        /// The trigger's settings as given (JSON).
        pub config: String,
        /// For http triggers: the path, unique in the tenant. Else None.
        #[sea_orm(unique_key = "tenant_route")]
        pub route: Option<String>,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Timer ticks already fired: one row per (trigger, tick), so several schedulers
/// fire each tick once.
pub mod trigger_fire {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "trigger_fires")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub trigger_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub tick_ms: i64,
        pub invocation_id: String,
        pub fired_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Tenant buckets (object storage that storage triggers listen to).
pub mod bucket {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "buckets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique_key = "tenant_bucket")]
        pub tenant_id: String,
        #[sea_orm(unique_key = "tenant_bucket")]
        pub name: String,
        pub created_at: i64,
        /// Objects in it (counted against the tenant's `max_objects`).
        #[sea_orm(default_value = 0)]
        pub objects: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The message queues a tenant has used (`POST /v1/queues/{q}/messages`), counted
/// against its `max_queues`.
pub mod tenant_queue {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenant_queues")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Stored code packages, one per digest: when `code.store` last stored each, so
/// garbage collection can spare a package whose task has not activated yet.
pub mod package {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "packages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sha256: String,
        /// Zipped size, bytes.
        pub size: i64,
        /// When a `code.store` last stored it (epoch ms).
        pub stored_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The region catalogue: every region's name, public endpoint and zones. Written by
/// the global directory, replicated to every region.
pub mod region {
    use sea_orm::entity::prelude::*;

    #[derive(
        Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize,
    )]
    #[sea_orm(table_name = "regions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The region's public API endpoint.
        pub url: String,
        /// Its availability zones, a JSON array of names.
        pub zones: String,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The global directory's change log: every identity change, in commit order
/// (`seq` is assigned under a lock, so a reader never sees a gap fill in later).
/// Only the directory's own database has rows here.
pub mod directory_change {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "directory_changes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub seq: i64,
        pub at: i64,
        /// The change, JSON (`api_gateway::directory::Change`).
        #[sea_orm(column_type = "Text")]
        pub body: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// How far a region's replica of the directory has applied its change log.
pub mod replica_cursor {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "replica_cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The last change applied.
        pub seq: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
