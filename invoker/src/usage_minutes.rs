//! Each function's calls per minute — counts and a histogram of durations — added
//! in the transaction that ships a journal segment, so they count every call once
//! like the hourly totals.

use std::collections::HashMap;

use nimbus_core::db::{duration_bucket, function_minute};
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use crate::usage_record::{Outcome, UsageRecord};

const MINUTE_MS: i64 = 60_000;

/// One (tenant, function, region, minute).
#[derive(Default)]
struct Minute {
    invocations: i64,
    errors: i64,
    timeouts: i64,
    throttles: i64,
    cold_starts: i64,
    duration_us: i64,
    duration_max_us: i64,
    buckets: [i64; 16],
}

impl Minute {
    fn add(&mut self, r: &UsageRecord) {
        match r.outcome {
            Outcome::Provisioned => return,
            Outcome::Throttle => {
                self.throttles += 1;
                return;
            }
            Outcome::FunctionError => self.errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Success => {}
        }
        let us = r.duration_us.min(i64::MAX as u64 / 1024);
        self.invocations += 1;
        self.cold_starts += r.cold as i64;
        self.duration_us += us as i64;
        self.duration_max_us = self.duration_max_us.max(us as i64);
        self.buckets[duration_bucket(us)] += 1;
    }
}

/// Adds `records` (new ones only: the caller has deduplicated them) to the
/// per-minute rows, in `txn`.
pub(crate) async fn add<C: ConnectionTrait>(
    txn: &C,
    backend: DbBackend,
    records: &[&UsageRecord],
) -> Result<(), DbErr> {
    use function_minute::Column as M;
    let mut minutes: HashMap<(&str, &str, &str, i64), Minute> = HashMap::new();
    for r in records {
        if r.outcome == Outcome::Provisioned {
            continue;
        }
        let minute = r.at_ms - r.at_ms.rem_euclid(MINUTE_MS);
        minutes
            .entry((&r.tenant, &r.function, &r.region, minute))
            .or_default()
            .add(r);
    }
    if minutes.is_empty() {
        return Ok(());
    }
    let sums: Vec<M> = [
        M::Invocations,
        M::Errors,
        M::Timeouts,
        M::Throttles,
        M::ColdStarts,
        M::DurationUs,
    ]
    .into_iter()
    .chain(function_minute::BUCKETS)
    .collect();
    let mut upsert = Query::insert();
    upsert.into_table(function_minute::Entity).columns(
        [M::TenantId, M::Function, M::Region, M::MinuteMs]
            .into_iter()
            .chain(sums.iter().copied())
            .chain([M::DurationMaxUs]),
    );
    for ((t, f, region, minute), m) in &minutes {
        let mut values: Vec<SimpleExpr> = vec![
            (*t).into(),
            (*f).into(),
            (*region).into(),
            (*minute).into(),
            m.invocations.into(),
            m.errors.into(),
            m.timeouts.into(),
            m.throttles.into(),
            m.cold_starts.into(),
            m.duration_us.into(),
        ];
        values.extend(m.buckets.iter().map(|c| SimpleExpr::from(*c)));
        values.push(m.duration_max_us.into());
        upsert.values_panic(values);
    }
    let greatest = match backend {
        DbBackend::Sqlite => "MAX",
        _ => "GREATEST",
    };
    let mut updates = adding(function_minute::Entity, sums.iter().copied());
    updates.push((
        M::DurationMaxUs,
        Expr::cust(format!(
            "{greatest}(function_minutes.duration_max_us, excluded.duration_max_us)"
        )),
    ));
    upsert.on_conflict(
        OnConflict::columns([M::TenantId, M::Function, M::Region, M::MinuteMs])
            .values(updates)
            .to_owned(),
    );
    txn.execute_raw(backend.build(&upsert)).await?;
    Ok(())
}

/// `SET c = table.c + excluded.c` for each of `columns`: an upsert that adds.
pub(crate) fn adding<T, C>(
    table: T,
    columns: impl IntoIterator<Item = C>,
) -> Vec<(C, sea_orm::sea_query::SimpleExpr)>
where
    T: sea_orm::sea_query::IntoIden + Copy,
    C: sea_orm::sea_query::IntoIden + Copy,
{
    use sea_orm::sea_query::ExprTrait as _;
    columns
        .into_iter()
        .map(|c| {
            (
                c,
                Expr::col((table, c)).add(Expr::col((Alias::new("excluded"), c))),
            )
        })
        .collect()
}

/// Deletes minutes older than `before` (epoch ms).
pub(crate) async fn prune<C: ConnectionTrait>(db: &C, before: i64) -> Result<(), DbErr> {
    use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};
    function_minute::Entity::delete_many()
        .filter(function_minute::Column::MinuteMs.lt(before))
        .exec(db)
        .await?;
    Ok(())
}
