//! Usage in the database: a journal segment's records into the hourly totals, once;
//! a tenant's month so far; pruning.

use std::collections::{HashMap, HashSet};

use nimbus_core::db::{usage_hourly, usage_record, usage_segment};
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait};

use crate::usage_record::{Outcome, UsageRecord};

/// Records per database statement.
const SHIP_BATCH: usize = 500;

/// Totals of one (tenant, function, region, hour).
#[derive(Default)]
struct Totals {
    requests: i64,
    errors: i64,
    timeouts: i64,
    throttles: i64,
    cold_starts: i64,
    billed_ms: i64,
    mb_ms: i64,
    provisioned_mb_ms: i64,
}

impl Totals {
    fn add(&mut self, r: &UsageRecord) {
        match r.outcome {
            Outcome::Provisioned => {
                self.provisioned_mb_ms += r.mb_ms();
                return;
            }
            Outcome::Throttle => {
                self.throttles += 1;
                return;
            }
            Outcome::FunctionError => self.errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Success => {}
        }
        self.requests += 1;
        self.cold_starts += r.cold as i64;
        self.billed_ms += r.billed_ms as i64;
        self.mb_ms += r.mb_ms();
    }
}

/// Ships one segment in one transaction: its name into `usage_segments` (a segment
/// already there was shipped: nothing more happens), with `keep_records` its
/// records into `usage_records` (keyed by request id: one already there is not
/// counted again), and the hourly totals and per-minute metrics of the records that
/// were new. Returns how many were new.
pub async fn store(
    db: &DatabaseConnection,
    segment: &str,
    records: &[UsageRecord],
    keep_records: bool,
) -> Result<usize, DbErr> {
    use usage_hourly::Column as H;
    let backend = db.get_database_backend();
    // The same id twice in one segment would be one record but two additions.
    let mut seen = HashSet::new();
    let records: Vec<&UsageRecord> = records.iter().filter(|r| seen.insert(&r.id)).collect();
    let txn = nimbus_core::db::begin_write(db).await?;
    let first = usage_segment::Entity::insert(usage_segment::ActiveModel {
        name: sea_orm::Set(segment.to_string()),
        shipped_at: sea_orm::Set(nimbus_core::now_ms()),
    })
    .on_conflict(
        OnConflict::column(usage_segment::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    if first == 0 {
        txn.commit().await?;
        return Ok(0);
    }
    let new: Option<HashSet<String>> = if keep_records {
        let mut new = HashSet::new();
        for chunk in records.chunks(SHIP_BATCH) {
            let insert = insert_records(chunk);
            new.extend(
                txn.query_all_raw(backend.build(&insert))
                    .await?
                    .iter()
                    .filter_map(|row| row.try_get::<String>("", "request_id").ok()),
            );
        }
        Some(new)
    } else {
        None
    };
    let is_new = |r: &&&UsageRecord| new.as_ref().is_none_or(|n| n.contains(&r.id));
    let mut totals: HashMap<(&str, &str, &str, i64), Totals> = HashMap::new();
    let new_records: Vec<&UsageRecord> = records.iter().filter(is_new).copied().collect();
    crate::usage_minutes::add(&txn, backend, &new_records).await?;
    let mut stored = 0;
    for r in &new_records {
        stored += 1;
        let hour = r.at_ms - r.at_ms.rem_euclid(3_600_000);
        totals
            .entry((&r.tenant, &r.function, &r.region, hour))
            .or_default()
            .add(r);
    }
    if !totals.is_empty() {
        let sums = [
            H::Requests,
            H::Errors,
            H::Timeouts,
            H::Throttles,
            H::ColdStarts,
            H::BilledMs,
            H::MbMs,
            H::ProvisionedMbMs,
        ];
        let mut upsert = Query::insert();
        upsert.into_table(usage_hourly::Entity).columns(
            [H::TenantId, H::Function, H::Region, H::HourMs]
                .into_iter()
                .chain(sums),
        );
        for ((t, f, region, hour), s) in &totals {
            upsert.values_panic([
                (*t).into(),
                (*f).into(),
                (*region).into(),
                (*hour).into(),
                s.requests.into(),
                s.errors.into(),
                s.timeouts.into(),
                s.throttles.into(),
                s.cold_starts.into(),
                s.billed_ms.into(),
                s.mb_ms.into(),
                s.provisioned_mb_ms.into(),
            ]);
        }
        upsert.on_conflict(
            OnConflict::columns([H::TenantId, H::Function, H::Region, H::HourMs])
                .values(crate::usage_minutes::adding(usage_hourly::Entity, sums))
                .to_owned(),
        );
        txn.execute_raw(backend.build(&upsert)).await?;
    }
    txn.commit().await?;
    Ok(stored)
}

/// An insert of `records` into `usage_records`, skipping ids already there and
/// returning the ids it inserted.
fn insert_records(records: &[&UsageRecord]) -> sea_orm::sea_query::InsertStatement {
    use usage_record::Column as R;
    let mut insert = Query::insert();
    insert.into_table(usage_record::Entity).columns([
        R::RequestId,
        R::TenantId,
        R::Function,
        R::Version,
        R::Region,
        R::AtMs,
        R::Outcome,
        R::DurationUs,
        R::BilledMs,
        R::MemoryMb,
        R::InitMs,
        R::ColdStart,
    ]);
    for r in records {
        insert.values_panic([
            r.id.clone().into(),
            r.tenant.clone().into(),
            r.function.clone().into(),
            r.version.clone().into(),
            r.region.clone().into(),
            r.at_ms.into(),
            r.outcome.as_str().into(),
            (r.duration_us.min(i64::MAX as u64) as i64).into(),
            (r.billed_ms.min(i64::MAX as u64) as i64).into(),
            (r.memory_mb as i32).into(),
            (r.init_ms.min(i32::MAX as u32) as i32).into(),
            r.cold.into(),
        ]);
    }
    insert
        .on_conflict(OnConflict::column(R::RequestId).do_nothing().to_owned())
        .returning_col(R::RequestId);
    insert
}

/// A tenant's billed requests and MB·ms since `from` (epoch ms).
pub async fn month_to_date(
    db: &DatabaseConnection,
    tenant_id: &str,
    from: i64,
) -> Result<(u64, u64), DbErr> {
    use sea_orm::sea_query::ExprTrait as _;
    use usage_hourly::Column as H;
    let q = Query::select()
        .expr_as(
            Expr::cust("CAST(COALESCE(SUM(requests), 0) AS BIGINT)"),
            Alias::new("requests"),
        )
        .expr_as(
            Expr::cust("CAST(COALESCE(SUM(mb_ms), 0) AS BIGINT)"),
            Alias::new("mb_ms"),
        )
        .from(usage_hourly::Entity)
        .and_where(Expr::col(H::TenantId).eq(tenant_id))
        .and_where(Expr::col(H::HourMs).gte(from))
        .to_owned();
    let row = db
        .query_one_raw(db.get_database_backend().build(&q))
        .await?;
    Ok(row
        .map(|r| {
            (
                Ord::max(r.try_get::<i64>("", "requests").unwrap_or(0), 0) as u64,
                Ord::max(r.try_get::<i64>("", "mb_ms").unwrap_or(0), 0) as u64,
            )
        })
        .unwrap_or_default())
}

/// Deletes per-invocation records and shipped segments' names older than `before`
/// (epoch ms).
pub(crate) async fn prune(db: &DatabaseConnection, before: i64) -> Result<(), DbErr> {
    use sea_orm::{ColumnTrait as _, QueryFilter as _};
    usage_record::Entity::delete_many()
        .filter(usage_record::Column::AtMs.lt(before))
        .exec(db)
        .await?;
    usage_segment::Entity::delete_many()
        .filter(usage_segment::Column::ShippedAt.lt(before))
        .exec(db)
        .await?;
    Ok(())
}
