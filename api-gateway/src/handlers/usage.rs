//! Usage: what tenants used (from the hourly totals the meter ships), by function,
//! day, hour or tenant, with the estimated cost from the price sheet; JSON or CSV.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use nimbus_core::config::PricingConfig;
use nimbus_core::db::{MB_MS_PER_GB_S, tenant, usage_hourly};
use nimbus_core::model::Role;
use nimbus_core::{Error, rfc3339};
use sea_orm::sea_query::{Alias, Expr, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, EntityTrait as _};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Path, Query as QueryParams};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Query of the usage endpoints.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// The first day (`YYYY-MM-DD`, UTC) or instant (RFC 3339). Default: the start of
    /// this month.
    #[serde(default)]
    from: Option<String>,
    /// The last day, included (`YYYY-MM-DD`), or the instant to stop before (RFC
    /// 3339). Default: now.
    #[serde(default)]
    to: Option<String>,
    /// `function` (default for a tenant), `day`, `hour` (at most 31 days), or
    /// `tenant` (admins without `x-nimbus-tenant`, the default there).
    #[serde(default)]
    group_by: Option<String>,
    /// `csv` for CSV (as `Accept: text/csv` does).
    #[serde(default)]
    format: Option<String>,
}

/// Usage of one group.
#[derive(Serialize, Default, Clone, utoipa::ToSchema)]
pub struct UsageItem {
    /// The tenant (grouped by tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The function (grouped by function).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The day, `YYYY-MM-DD` UTC (grouped by day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    /// The hour's start, RFC 3339 (grouped by hour).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour: Option<String>,
    /// Billed invocations: successes, function errors and timeouts.
    pub requests: u64,
    /// Invocations whose function raised, crashed or failed to start.
    pub errors: u64,
    /// Invocations that ran past their timeout.
    pub timeouts: u64,
    /// Calls refused for concurrency (not billed).
    pub throttles: u64,
    /// Invocations that started an instance.
    pub cold_starts: u64,
    /// Billed duration, ms.
    pub billed_ms: u64,
    /// Billed duration × memory.
    pub gb_seconds: f64,
    /// Provisioned concurrency kept ready × its memory.
    pub provisioned_gb_seconds: f64,
    /// The estimated cost (grouped by tenant: this month's free tier taken off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<f64>,
    /// Grouped by tenant: its monthly cap on requests (null: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_requests_cap: Option<u64>,
    /// Grouped by tenant: its monthly cap on GB-seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_gb_seconds_cap: Option<u64>,
    /// Grouped by tenant: how much of its nearest cap this month's usage took,
    /// percent (absent without caps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_used_pct: Option<f64>,
}

/// A usage report.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// The range's start (RFC 3339, on the hour).
    pub from: String,
    /// The range's end, excluded.
    pub to: String,
    /// How items are grouped.
    pub group_by: String,
    /// One per group, in order (by tenant: nearest its cap first).
    pub items: Vec<UsageItem>,
    /// The sum over the items.
    pub totals: UsageItem,
    /// The estimated cost of the range, from the price sheet, each month's free
    /// tier taken off per tenant.
    pub estimated_cost: f64,
    /// The price sheet's currency.
    pub currency: String,
}

/// `GET /v1/usage`: the caller's tenant's usage; for an admin without
/// `x-nimbus-tenant`, every tenant's.
#[utoipa::path(get, path = "/v1/usage", tag = "usage",
    params(UsageQuery),
    responses((status = 200, description = "Usage by function, day, hour or tenant (JSON, or CSV with Accept: text/csv)", body = UsageReport),
        (status = 400, description = "InvalidRequest", body = ErrorBody),
        (status = 401, description = "Unauthenticated", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn usage(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(q): QueryParams<UsageQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = match (&caller.tenant, &caller.acting_for) {
        (Some(t), _) | (None, Some(t)) => Some(t.id.clone()),
        (None, None) => None,
    };
    report(&state, tenant, &headers, q).await
}

/// `GET /v1/tenants/{tenant}/usage`: admins see any tenant's, others their own.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/usage", tag = "usage",
    params(("tenant" = String, Path), UsageQuery),
    responses((status = 200, description = "The tenant's usage", body = UsageReport),
        (status = 400, description = "InvalidRequest", body = ErrorBody),
        (status = 401, description = "Unauthenticated", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found, or another tenant's", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn tenant_usage(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<UsageQuery>,
) -> ApiResult<Response> {
    if caller.role != Role::Admin
        && caller.tenant.as_ref().map(|t| t.name.as_str()) != Some(name.as_str())
    {
        return Err(Error::not_found("Tenant", name).into());
    }
    caller.require(Role::Developer)?;
    let t = crate::queries::tenant_by_name(&state.db, &name).await?;
    report(&state, Some(t.id), &headers, q).await
}

/// How a report groups.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GroupBy {
    Function,
    Day,
    Hour,
    Tenant,
}

impl GroupBy {
    fn parse(s: &str) -> Result<GroupBy, ApiError> {
        Ok(match s {
            "function" => GroupBy::Function,
            "day" => GroupBy::Day,
            "hour" => GroupBy::Hour,
            "tenant" => GroupBy::Tenant,
            _ => {
                return Err(ApiError::invalid(format!(
                    "group_by '{s}' is not one of function, day, hour, tenant"
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Function => "function",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Tenant => "tenant",
        }
    }
}

/// `from`: a day's start or an instant.
fn parse_bound(s: &str, name: &str, end: bool) -> Result<i64, ApiError> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let start = d
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis();
        return Ok(if end { start + DAY_MS } else { start });
    }
    nimbus_core::parse_rfc3339(s).ok_or_else(|| {
        ApiError::invalid(format!(
            "{name} must be a day (YYYY-MM-DD) or an RFC 3339 time, not '{s}'"
        ))
    })
}

/// One row of the grouped query.
struct Row {
    tenant: String,
    function: Option<String>,
    bucket: i64,
    sums: [i64; 8],
}

const SUMS: [&str; 8] = [
    "requests",
    "errors",
    "timeouts",
    "throttles",
    "cold_starts",
    "billed_ms",
    "mb_ms",
    "provisioned_mb_ms",
];

/// Sums per (tenant, function if `by_function`, bucket) over `[from, to)`, the
/// bucket being the hour's or the day's start.
async fn grouped(
    db: &DatabaseConnection,
    tenant: Option<&str>,
    by_function: bool,
    hourly: bool,
    (from, to): (i64, i64),
) -> Result<Vec<Row>, sea_orm::DbErr> {
    use sea_orm::sea_query::ExprTrait as _;
    use usage_hourly::Column as H;
    let bucket = if hourly {
        "hour_ms".to_string()
    } else {
        format!("(hour_ms / {DAY_MS}) * {DAY_MS}")
    };
    let mut q: SelectStatement = Query::select();
    q.column(H::TenantId)
        .expr_as(Expr::cust(bucket.clone()), Alias::new("bucket"))
        .from(usage_hourly::Entity)
        .and_where(Expr::col(H::HourMs).gte(from - from.rem_euclid(HOUR_MS)))
        .and_where(Expr::col(H::HourMs).lt(to))
        .group_by_col(H::TenantId)
        .add_group_by([Expr::cust(bucket)])
        .order_by(Alias::new("bucket"), Order::Asc);
    for s in SUMS {
        q.expr_as(
            Expr::cust(format!("CAST(SUM({s}) AS BIGINT)")),
            Alias::new(s),
        );
    }
    if by_function {
        q.column(H::Function).group_by_col(H::Function);
    }
    if let Some(t) = tenant {
        q.and_where(Expr::col(H::TenantId).eq(t));
    }
    let rows = db
        .query_all_raw(db.get_database_backend().build(&q))
        .await?;
    rows.iter()
        .map(|r| {
            let mut sums = [0i64; 8];
            for (i, s) in SUMS.iter().enumerate() {
                sums[i] = r.try_get::<i64>("", s)?;
            }
            Ok(Row {
                tenant: r.try_get("", "tenant_id")?,
                function: if by_function {
                    Some(r.try_get("", "function")?)
                } else {
                    None
                },
                bucket: r.try_get("", "bucket")?,
                sums,
            })
        })
        .collect()
}

impl UsageItem {
    fn add(&mut self, s: &[i64; 8]) {
        let u = |v: i64| v.max(0) as u64;
        self.requests += u(s[0]);
        self.errors += u(s[1]);
        self.timeouts += u(s[2]);
        self.throttles += u(s[3]);
        self.cold_starts += u(s[4]);
        self.billed_ms += u(s[5]);
        self.gb_seconds += s[6] as f64 / MB_MS_PER_GB_S;
        self.provisioned_gb_seconds += s[7] as f64 / MB_MS_PER_GB_S;
    }

    fn merge(&mut self, o: &UsageItem) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.throttles += o.throttles;
        self.cold_starts += o.cold_starts;
        self.billed_ms += o.billed_ms;
        self.gb_seconds += o.gb_seconds;
        self.provisioned_gb_seconds += o.provisioned_gb_seconds;
    }
}

/// Cost per tenant, each calendar month's free tier taken off.
fn cost_by_tenant(rows: &[Row], pricing: &PricingConfig) -> HashMap<String, f64> {
    let mut months: HashMap<(&str, i64), UsageItem> = HashMap::new();
    for r in rows {
        let month = invoker::usage::month_bounds(r.bucket).0;
        months.entry((&r.tenant, month)).or_default().add(&r.sums);
    }
    let mut cost: HashMap<String, f64> = HashMap::new();
    for ((t, _), u) in months {
        *cost.entry(t.to_string()).or_default() +=
            pricing.month_cost(u.requests, u.gb_seconds, u.provisioned_gb_seconds);
    }
    cost
}

async fn report(
    state: &AppState,
    tenant: Option<String>,
    headers: &HeaderMap,
    q: UsageQuery,
) -> ApiResult<Response> {
    let now = nimbus_core::now_ms();
    let from = match &q.from {
        Some(s) => parse_bound(s, "from", false)?,
        None => invoker::usage::month_bounds(now).0,
    };
    let to = match &q.to {
        Some(s) => parse_bound(s, "to", true)?,
        None => now + 1,
    };
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    let group = match (&q.group_by, &tenant) {
        (Some(g), _) => GroupBy::parse(g)?,
        (None, Some(_)) => GroupBy::Function,
        (None, None) => GroupBy::Tenant,
    };
    match (group, &tenant) {
        (GroupBy::Tenant, Some(_)) => {
            return Err(ApiError::invalid(
                "group_by=tenant is the all-tenants view: an admin without x-nimbus-tenant",
            ));
        }
        (GroupBy::Function, None) => {
            return Err(ApiError::invalid(
                "group_by=function is per tenant: use /v1/tenants/{tenant}/usage or x-nimbus-tenant",
            ));
        }
        _ => {}
    }
    let max_days = if group == GroupBy::Hour { 31 } else { 400 };
    if to - from > max_days * DAY_MS {
        return Err(ApiError::invalid(format!(
            "a range grouped by {} may span at most {max_days} days",
            group.as_str()
        )));
    }
    let csv = q.format.as_deref() == Some("csv")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv"));
    if let Some(f) = q.format.as_deref().filter(|f| *f != "csv" && *f != "json") {
        return Err(ApiError::invalid(format!(
            "format '{f}' is not csv or json"
        )));
    }
    let rows = grouped(
        &state.db,
        tenant.as_deref(),
        group == GroupBy::Function,
        group == GroupBy::Hour,
        (from, to),
    )
    .await
    .map_err(Error::from)?;
    let costs = cost_by_tenant(&rows, &state.pricing);
    let mut groups: BTreeMap<String, UsageItem> = BTreeMap::new();
    for r in &rows {
        let (key, item) = match group {
            GroupBy::Function => {
                let f = r.function.clone().unwrap_or_default();
                (
                    f.clone(),
                    UsageItem {
                        function: Some(f),
                        ..Default::default()
                    },
                )
            }
            GroupBy::Day => {
                let d = rfc3339(r.bucket)[..10].to_string();
                (
                    d.clone(),
                    UsageItem {
                        day: Some(d),
                        ..Default::default()
                    },
                )
            }
            GroupBy::Hour => {
                let h = rfc3339(r.bucket);
                (
                    h.clone(),
                    UsageItem {
                        hour: Some(h),
                        ..Default::default()
                    },
                )
            }
            GroupBy::Tenant => (
                r.tenant.clone(),
                UsageItem {
                    tenant: Some(r.tenant.clone()),
                    ..Default::default()
                },
            ),
        };
        groups.entry(key).or_insert(item).add(&r.sums);
    }
    let mut items: Vec<UsageItem> = groups.into_values().collect();
    if group == GroupBy::Tenant {
        tenant_view(&state.db, &mut items, &costs, now).await?;
    }
    let mut totals = UsageItem::default();
    for i in &items {
        totals.merge(i);
    }
    let estimated_cost = costs.values().sum::<f64>();
    let report = UsageReport {
        from: rfc3339(from - from.rem_euclid(HOUR_MS)),
        to: rfc3339(to),
        group_by: group.as_str().into(),
        items,
        totals,
        estimated_cost: (estimated_cost * 1e6).round() / 1e6,
        currency: state.pricing.currency.clone(),
    };
    if csv {
        let mut resp = to_csv(&report, group).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(resp);
    }
    Ok(axum::Json(report).into_response())
}

/// Tenant items: names for ids, caps, this month's use of them and the cost;
/// nearest to a cap first.
async fn tenant_view(
    db: &DatabaseConnection,
    items: &mut [UsageItem],
    costs: &HashMap<String, f64>,
    now: i64,
) -> ApiResult<()> {
    let tenants: HashMap<String, tenant::Model> = tenant::Entity::find()
        .all(db)
        .await
        .map_err(Error::from)?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    let month = invoker::usage::month_bounds(now).0;
    for item in items.iter_mut() {
        let id = item.tenant.clone().unwrap_or_default();
        item.estimated_cost = costs.get(&id).map(|c| (c * 1e6).round() / 1e6);
        let Some(t) = tenants.get(&id) else {
            item.tenant = Some(format!("(deleted) {id}"));
            continue;
        };
        item.tenant = Some(t.name.clone());
        item.monthly_requests_cap = t.monthly_requests.map(|c| c.max(0) as u64);
        item.monthly_gb_seconds_cap = t.monthly_gb_seconds.map(|c| c.max(0) as u64);
        if item.monthly_requests_cap.is_some() || item.monthly_gb_seconds_cap.is_some() {
            let (requests, mb_ms) = invoker::usage::month_to_date(db, &id, month)
                .await
                .map_err(Error::from)?;
            let pct = |used: f64, cap: Option<u64>| {
                cap.map(|c| {
                    if c == 0 {
                        100.0
                    } else {
                        used / c as f64 * 100.0
                    }
                })
            };
            let r = pct(requests as f64, item.monthly_requests_cap);
            let g = pct(mb_ms as f64 / MB_MS_PER_GB_S, item.monthly_gb_seconds_cap);
            item.cap_used_pct = r
                .into_iter()
                .chain(g)
                .reduce(f64::max)
                .map(|p| (p * 10.0).round() / 10.0);
        }
    }
    items.sort_by(|a, b| {
        b.cap_used_pct
            .unwrap_or(-1.0)
            .total_cmp(&a.cap_used_pct.unwrap_or(-1.0))
            .then(b.gb_seconds.total_cmp(&a.gb_seconds))
    });
    Ok(())
}

/// The report as CSV: one header line, one line per item.
fn to_csv(r: &UsageReport, group: GroupBy) -> String {
    let mut out = format!(
        "{},requests,errors,timeouts,throttles,cold_starts,billed_ms,gb_seconds,provisioned_gb_seconds\n",
        group.as_str()
    );
    for i in &r.items {
        let key = match group {
            GroupBy::Function => i.function.as_deref(),
            GroupBy::Day => i.day.as_deref(),
            GroupBy::Hour => i.hour.as_deref(),
            GroupBy::Tenant => i.tenant.as_deref(),
        }
        .unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{:.6},{:.6}",
            csv_field(key),
            i.requests,
            i.errors,
            i.timeouts,
            i.throttles,
            i.cold_starts,
            i.billed_ms,
            i.gb_seconds,
            i.provisioned_gb_seconds
        );
    }
    out
}

/// A CSV field, quoted when it must be (RFC 4180); a leading `=`, `+`, `-` or `@`
/// is escaped so that spreadsheets do not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_days_or_instants() {
        let d = parse_bound("2026-12-01", "from", false).unwrap();
        assert_eq!(rfc3339(d), "2026-12-01T00:00:00.000Z");
        let e = parse_bound("2026-12-01", "to", true).unwrap();
        assert_eq!(e - d, DAY_MS);
        assert!(parse_bound("2026-12-01T10:00:00Z", "from", false).is_ok());
        assert!(parse_bound("yesterday", "from", false).is_err());
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
    }
}
