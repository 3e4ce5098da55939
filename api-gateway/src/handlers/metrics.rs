//! A function's metrics over time — invocations, errors, throttles, cold starts and
//! duration percentiles per period — from the per-minute rows the meter ships
//! (`function_minutes`), for the console's charts and `nimbus fn metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use nimbus_core::db::{duration_quantile, function_minute};
use nimbus_core::model::Role;
use nimbus_core::rfc3339;
use sea_orm::sea_query::{Alias, Expr, Order, Query};
use sea_orm::{ConnectionTrait as _, DatabaseConnection};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Path, Query as QueryParams};

const MINUTE_MS: i64 = 60_000;
/// The most points one answer has.
const MAX_POINTS: i64 = 1_440;
/// Periods chosen when none is asked for: the shortest giving at most 360 points.
const PERIODS_S: [i64; 6] = [60, 300, 900, 3_600, 21_600, 86_400];

/// Query of `GET /v1/functions/{name}/metrics`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// The start (RFC 3339). Default: an hour before `to`.
    #[serde(default)]
    from: Option<String>,
    /// The end, excluded (RFC 3339). Default: now.
    #[serde(default)]
    to: Option<String>,
    /// Seconds per point: a multiple of 60, at most 86400. Default: the shortest
    /// of 60, 300, 900, 3600, 21600, 86400 that gives at most 360 points.
    #[serde(default)]
    period: Option<i64>,
}

/// The calls of one period (or of the whole range).
#[derive(Serialize, Default, utoipa::ToSchema)]
pub struct MetricsPoint {
    /// The period's start, RFC 3339 (absent in `totals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Invocations that ran: successes, function errors and timeouts.
    pub invocations: u64,
    /// Invocations whose function raised, crashed or failed to start.
    pub errors: u64,
    /// Invocations that ran past their timeout.
    pub timeouts: u64,
    /// Calls refused for concurrency.
    pub throttles: u64,
    /// Invocations that started an instance.
    pub cold_starts: u64,
    /// The handler's mean duration, ms (null without invocations).
    pub duration_avg_ms: Option<f64>,
    /// The median duration, ms, estimated from buckets (within 2.5× apart bounds:
    /// 0.25, 0.5, 1, 2.5 … 10,000 ms).
    pub duration_p50_ms: Option<f64>,
    /// The 99th percentile duration, ms, estimated the same way.
    pub duration_p99_ms: Option<f64>,
    /// The longest duration, ms.
    pub duration_max_ms: Option<f64>,
}

/// A function's metrics.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FunctionMetrics {
    pub function: String,
    /// The first point's start, RFC 3339.
    pub from: String,
    /// The end, excluded.
    pub to: String,
    /// Seconds per point.
    pub period_s: i64,
    /// One per period, oldest first, periods without calls included.
    pub points: Vec<MetricsPoint>,
    /// The whole range.
    pub totals: MetricsPoint,
}

/// Sums of one period.
#[derive(Default, Clone)]
struct Sums {
    counts: [i64; 6],
    max_us: i64,
    buckets: [i64; 16],
}

impl Sums {
    fn merge(&mut self, o: &Sums) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.max_us = self.max_us.max(o.max_us);
    }

    fn point(&self, time: Option<String>) -> MetricsPoint {
        let u = |v: i64| v.max(0) as u64;
        let ms = |us: f64| (us / 10.0).round() / 100.0;
        let n = self.counts[0];
        let q = |p| duration_quantile(&self.buckets, self.max_us, p).map(ms);
        MetricsPoint {
            time,
            invocations: u(n),
            errors: u(self.counts[1]),
            timeouts: u(self.counts[2]),
            throttles: u(self.counts[3]),
            cold_starts: u(self.counts[4]),
            duration_avg_ms: (n > 0).then(|| ms(self.counts[5] as f64 / n as f64)),
            duration_p50_ms: q(0.5),
            duration_p99_ms: q(0.99),
            duration_max_ms: (n > 0).then(|| ms(self.max_us as f64)),
        }
    }
}

const COUNTS: [&str; 6] = [
    "invocations",
    "errors",
    "timeouts",
    "throttles",
    "cold_starts",
    "duration_us",
];

/// `GET /v1/functions/{name}/metrics`.
#[utoipa::path(get, path = "/v1/functions/{name}/metrics", tag = "functions",
    params(("name" = String, Path), MetricsQuery),
    responses((status = 200, description = "The function's calls and durations per period", body = FunctionMetrics),
        (status = 400, description = "InvalidRequest", body = ErrorBody),
        (status = 401, description = "Unauthenticated", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn function_metrics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<MetricsQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?;
    let f = crate::queries::find_function(&state.db, tenant, &name).await?;
    let instant = |s: &Option<String>, what: &str| -> Result<Option<i64>, ApiError> {
        s.as_deref()
            .map(|s| {
                nimbus_core::parse_rfc3339(s).ok_or_else(|| {
                    ApiError::invalid(format!("{what} must be an RFC 3339 time, not '{s}'"))
                })
            })
            .transpose()
    };
    let to = instant(&q.to, "to")?.unwrap_or_else(nimbus_core::now_ms);
    let from = instant(&q.from, "from")?.unwrap_or(to - 60 * MINUTE_MS);
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    let span_s = ceil_div(to - from, 1000);
    let period = match q.period {
        Some(p) if !(60..=86_400).contains(&p) || p % 60 != 0 => {
            return Err(ApiError::invalid(format!(
                "period must be a multiple of 60 seconds from 60 to 86400, not {p}"
            )));
        }
        Some(p) => p,
        None => PERIODS_S
            .into_iter()
            .find(|p| ceil_div(span_s, *p) <= 360)
            .unwrap_or(86_400),
    };
    let period_ms = period * 1000;
    let first = from - from.rem_euclid(period_ms);
    let count = ceil_div(to - first, period_ms);
    if count > MAX_POINTS {
        return Err(ApiError::invalid(format!(
            "{count} points of {period} s: at most {MAX_POINTS}; ask for a longer period or a shorter range"
        )));
    }
    let rows = per_period(&state.db, &tenant.id, &f.name, period_ms, (first, to)).await?;
    let mut totals = Sums::default();
    let mut points = Vec::with_capacity(count as usize);
    let mut rows = rows.into_iter().peekable();
    for i in 0..count {
        let start = first + i * period_ms;
        let mut sums = Sums::default();
        while let Some((at, s)) = rows.peek() {
            if *at > start {
                break;
            }
            if *at == start {
                sums.merge(s);
            }
            rows.next();
        }
        totals.merge(&sums);
        points.push(sums.point(Some(rfc3339(start))));
    }
    Ok(axum::Json(FunctionMetrics {
        function: f.name,
        from: rfc3339(first),
        to: rfc3339(to),
        period_s: period,
        points,
        totals: totals.point(None),
    })
    .into_response())
}

/// `a / b` rounded up, for `a` ≥ 0 and `b` > 0.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The function's sums per period over `[from, to)`, all regions, oldest first.
async fn per_period(
    db: &DatabaseConnection,
    tenant: &str,
    function: &str,
    period_ms: i64,
    (from, to): (i64, i64),
) -> Result<Vec<(i64, Sums)>, sea_orm::DbErr> {
    use function_minute::Column as M;
    use sea_orm::sea_query::ExprTrait as _;
    let bucket = format!("(minute_ms / {period_ms}) * {period_ms}");
    let mut q = Query::select();
    q.expr_as(Expr::cust(bucket.clone()), Alias::new("bucket"))
        .expr_as(
            Expr::cust("CAST(MAX(duration_max_us) AS BIGINT)"),
            Alias::new("max_us"),
        )
        .from(function_minute::Entity)
        .and_where(Expr::col(M::TenantId).eq(tenant))
        .and_where(Expr::col(M::Function).eq(function))
        .and_where(Expr::col(M::MinuteMs).gte(from))
        .and_where(Expr::col(M::MinuteMs).lt(to))
        .add_group_by([Expr::cust(bucket)])
        .order_by(Alias::new("bucket"), Order::Asc);
    let buckets: Vec<String> = (0..16).map(|i| format!("d{i}")).collect();
    for c in COUNTS
        .iter()
        .copied()
        .chain(buckets.iter().map(String::as_str))
    {
        q.expr_as(
            Expr::cust(format!("CAST(SUM({c}) AS BIGINT)")),
            Alias::new(c),
        );
    }
    let rows = db
        .query_all_raw(db.get_database_backend().build(&q))
        .await?;
    rows.iter()
        .map(|r| {
            let mut s = Sums {
                max_us: r.try_get("", "max_us")?,
                ..Sums::default()
            };
            for (i, c) in COUNTS.iter().enumerate() {
                s.counts[i] = r.try_get("", c)?;
            }
            for (i, c) in buckets.iter().enumerate() {
                s.buckets[i] = r.try_get("", c)?;
            }
            Ok((r.try_get("", "bucket")?, s))
        })
        .collect()
}
