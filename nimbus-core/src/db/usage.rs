//! Tables of metering: hourly totals per tenant, function and region (kept for
//! good: what usage queries, caps and bills read), the journal segments already
//! shipped (what makes shipping exactly-once), and, when `usage.keep_records` is on,
//! one record per invocation (kept for a while).

/// One invocation's usage record, keyed by its request id (`{id}:{attempt}` for an
/// asynchronous event's retries): a record shipped twice is stored once.
pub mod usage_record {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_records")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        #[sea_orm(indexed)]
        pub tenant_id: String,
        pub function: String,
        /// The version that ran (`$LATEST` or a number).
        pub version: String,
        pub region: String,
        /// When the call ended, epoch ms.
        #[sea_orm(indexed)]
        pub at_ms: i64,
        /// `success`, `function_error`, `timeout`, `throttle` or `provisioned`.
        pub outcome: String,
        /// How long the handler ran, µs.
        pub duration_us: i64,
        /// What is billed, ms (init included, rounded up to 1 ms; 0 for a throttle).
        pub billed_ms: i64,
        pub memory_mb: i32,
        pub init_ms: i32,
        pub cold_start: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Usage per tenant, function, region and hour.
pub mod usage_hourly {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_hourly")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub function: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub region: String,
        /// The hour's start, epoch ms.
        #[sea_orm(primary_key, auto_increment = false)]
        pub hour_ms: i64,
        /// Billed invocations (success, function error, timeout).
        pub requests: i64,
        pub errors: i64,
        pub timeouts: i64,
        pub throttles: i64,
        pub cold_starts: i64,
        pub billed_ms: i64,
        /// Σ memory_mb × billed_ms: GB-seconds × 1024 × 1000, exact.
        pub mb_ms: i64,
        /// Σ provisioned instances' memory_mb × the ms they were provisioned.
        pub provisioned_mb_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Journal segments shipped, by name: a segment's totals are added in the same
/// transaction that records its name, so a segment shipped again adds nothing.
pub mod usage_segment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_segments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        #[sea_orm(indexed)]
        pub shipped_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// MB·ms per GB-second.
pub const MB_MS_PER_GB_S: f64 = 1024.0 * 1000.0;
