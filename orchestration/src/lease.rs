//! Leases on runs: which worker drives a run, checked at every write.
//!
//! A claim is a conditional update on the lease the worker read, so exactly one
//! worker gets a run. The row the claim read may be stale by then (another worker
//! may have claimed the run, moved it on and released it with the same lease value,
//! 0): what the worker acts on is read again once it holds the lease. While it does,
//! no other worker changes the run.

use nimbus_core::db::execution_run;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

/// How long a claim holds a run; renewed at every transition, and every few
/// seconds while a state runs (a long Task). A worker that dies holding runs
/// delays them by this much before another worker takes them.
pub(crate) const LEASE_MS: i64 = 10_000;

/// Claims `seen` (a run read as due at `now`): the run as it is once held, and the
/// lease; None if another worker has it, or it is no longer ready and due.
pub(crate) async fn claim<C: ConnectionTrait>(
    db: &C,
    seen: &execution_run::Model,
    now: i64,
) -> Result<Option<(execution_run::Model, i64)>, sea_orm::DbErr> {
    // The random part keeps two claims of one run from ever holding the same lease.
    let lease = now + LEASE_MS + 1 + (rand::random::<u16>() as i64);
    let got = execution_run::Entity::update_many()
        .col_expr(execution_run::Column::LeaseUntil, Expr::value(lease))
        .filter(execution_run::Column::Id.eq(&seen.id))
        .filter(execution_run::Column::Status.eq("ready"))
        .filter(execution_run::Column::DueAt.lte(now))
        .filter(execution_run::Column::LeaseUntil.eq(seen.lease_until))
        .exec(db)
        .await?
        .rows_affected;
    if got != 1 {
        return Ok(None);
    }
    let held = held(
        execution_run::Entity::find_by_id(seen.id.clone()),
        &seen.id,
        lease,
    )
    .one(db)
    .await?;
    Ok(held.map(|r| (r, lease)))
}

/// Extends a held lease; None if the run is no longer the worker's.
pub(crate) async fn renew<C: ConnectionTrait>(
    db: &C,
    run: &execution_run::Model,
    lease: i64,
) -> Result<Option<i64>, sea_orm::DbErr> {
    let renewed = nimbus_core::now_ms() + LEASE_MS;
    let got = held(
        execution_run::Entity::update_many()
            .col_expr(execution_run::Column::LeaseUntil, Expr::value(renewed)),
        &run.id,
        lease,
    )
    .exec(db)
    .await?
    .rows_affected;
    Ok((got == 1).then_some(renewed))
}

/// `q` limited to the run, if it is still held with `lease` and ready.
pub(crate) fn held<Q: QueryFilter>(q: Q, run: &str, lease: i64) -> Q {
    q.filter(execution_run::Column::Id.eq(run))
        .filter(execution_run::Column::LeaseUntil.eq(lease))
        .filter(execution_run::Column::Status.eq("ready"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::config::DatabaseConfig;
    use sea_orm::{ActiveModelTrait as _, ActiveValue::Set};

    async fn db_with_run() -> (sea_orm::DatabaseConnection, execution_run::Model) {
        let db = nimbus_core::db::connect(&DatabaseConfig {
            url: "sqlite::memory:".into(),
            schema: None,
            max_connections: 1,
            log_statements: false,
        })
        .await
        .unwrap();
        let run = crate::store::new_run("e1", None, "".into(), "A".into(), &0.into(), true)
            .insert(&db)
            .await
            .unwrap();
        (db, run)
    }

    /// Moves a held run on to `state`, due at `due`, and releases it (lease 0), as a
    /// Wait's transition does.
    async fn move_on(db: &sea_orm::DatabaseConnection, id: &str, state: &str, due: i64) {
        let mut am: execution_run::ActiveModel = execution_run::Entity::find_by_id(id.to_string())
            .one(db)
            .await
            .unwrap()
            .unwrap()
            .into();
        am.state = Set(state.into());
        am.due_at = Set(due);
        am.lease_until = Set(0);
        am.update(db).await.unwrap();
    }

    #[tokio::test]
    async fn one_worker_claims_a_run() {
        let (db, seen) = db_with_run().await;
        let now = nimbus_core::now_ms();
        let (run, lease) = claim(&db, &seen, now).await.unwrap().unwrap();
        assert_eq!(run.state, "A");
        assert!(claim(&db, &seen, now).await.unwrap().is_none());
        assert!(renew(&db, &run, lease).await.unwrap().is_some());
        assert!(
            renew(&db, &run, lease).await.unwrap().is_none(),
            "the old lease is gone"
        );
    }

    /// The read a claim starts from was taken while the run was in A. Another
    /// worker then claimed it, moved it to B and released it. The stale claim must
    /// not run A again.
    #[tokio::test]
    async fn a_stale_read_does_not_run_a_state_again() {
        let (db, stale) = db_with_run().await;
        let now = nimbus_core::now_ms();
        let (other, _) = claim(&db, &stale, now).await.unwrap().unwrap();
        // B waits: it is not due, so the stale claim finds nothing to take.
        move_on(&db, &other.id, "B", now + 60_000).await;
        assert!(claim(&db, &stale, now).await.unwrap().is_none());
        // Once B is due, the claim takes the run as it is now: in B.
        move_on(&db, &other.id, "B", now).await;
        let (run, _) = claim(&db, &stale, now).await.unwrap().unwrap();
        assert_eq!(run.state, "B");
    }
}
