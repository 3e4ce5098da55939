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

/// Each function's calls per minute: counts and a histogram of durations, for the
/// charts of `GET /v1/functions/{name}/metrics`. Kept `usage.metrics_retention_h`.
pub mod function_minute {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "function_minutes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub function: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub region: String,
        /// The minute's start, epoch ms.
        #[sea_orm(primary_key, auto_increment = false, indexed)]
        pub minute_ms: i64,
        /// Invocations that ran (successes, function errors, timeouts).
        pub invocations: i64,
        pub errors: i64,
        pub timeouts: i64,
        pub throttles: i64,
        pub cold_starts: i64,
        /// Σ handler duration, µs.
        pub duration_us: i64,
        /// The longest handler duration, µs.
        pub duration_max_us: i64,
        /// Invocations per duration bucket: `d{i}` counts durations of at most
        /// [`DURATION_BOUNDS_US`](super::DURATION_BOUNDS_US)`[i]` (and more than the
        /// bound before); `d15` the rest.
        pub d0: i64,
        pub d1: i64,
        pub d2: i64,
        pub d3: i64,
        pub d4: i64,
        pub d5: i64,
        pub d6: i64,
        pub d7: i64,
        pub d8: i64,
        pub d9: i64,
        pub d10: i64,
        pub d11: i64,
        pub d12: i64,
        pub d13: i64,
        pub d14: i64,
        pub d15: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}

    /// The bucket columns, in order.
    pub const BUCKETS: [Column; 16] = [
        Column::D0,
        Column::D1,
        Column::D2,
        Column::D3,
        Column::D4,
        Column::D5,
        Column::D6,
        Column::D7,
        Column::D8,
        Column::D9,
        Column::D10,
        Column::D11,
        Column::D12,
        Column::D13,
        Column::D14,
        Column::D15,
    ];
}

/// Upper bounds of the duration buckets of [`function_minute`], µs (the last bucket
/// has none): from 250 µs to 10 s, about 2.5× apart.
pub const DURATION_BOUNDS_US: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// The bucket of a duration.
pub fn duration_bucket(us: u64) -> usize {
    DURATION_BOUNDS_US.partition_point(|b| *b < us)
}

/// The `q` quantile (0..=1) of the durations counted in `buckets`, µs, interpolated
/// linearly within its bucket (as Prometheus' `histogram_quantile`); the last
/// bucket reaches `max_us`. None without any.
pub fn duration_quantile(buckets: &[i64; 16], max_us: i64, q: f64) -> Option<f64> {
    let total: i64 = buckets.iter().map(|c| (*c).max(0)).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0i64;
    for (i, c) in buckets.iter().enumerate() {
        let c = (*c).max(0);
        if c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let lo = if i == 0 { 0 } else { DURATION_BOUNDS_US[i - 1] } as f64;
            let hi = DURATION_BOUNDS_US
                .get(i)
                .map_or(max_us as f64, |b| (*b as f64).min(max_us as f64))
                .max(lo);
            let within = (rank - seen as f64) / c as f64;
            return Some(lo + (hi - lo) * within.clamp(0.0, 1.0));
        }
        seen += c;
    }
    Some(max_us as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(duration_bucket(0), 0);
        assert_eq!(duration_bucket(250), 0);
        assert_eq!(duration_bucket(251), 1);
        assert_eq!(duration_bucket(10_000_000), 14);
        assert_eq!(duration_bucket(10_000_001), 15);
        let mut b = [0i64; 16];
        assert_eq!(duration_quantile(&b, 0, 0.5), None);
        // 99 calls of 1-2.5 ms, one of 40 ms.
        b[duration_bucket(2_000)] = 99;
        b[duration_bucket(40_000)] = 1;
        let p50 = duration_quantile(&b, 40_000, 0.5).unwrap();
        assert!((1_000.0..=2_500.0).contains(&p50), "{p50}");
        let p99 = duration_quantile(&b, 40_000, 0.99).unwrap();
        assert!((1_000.0..=2_500.0).contains(&p99), "{p99}");
        let p100 = duration_quantile(&b, 40_000, 1.0).unwrap();
        assert!((25_000.0..=40_000.0).contains(&p100), "{p100}");
        // Beyond the last bound: up to the longest seen.
        let mut b = [0i64; 16];
        b[15] = 2;
        assert_eq!(duration_quantile(&b, 30_000_000, 1.0), Some(30_000_000.0));
    }
}
