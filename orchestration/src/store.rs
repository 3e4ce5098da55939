//! State machines and executions in the database: what the API reads and writes.
//! Starting an execution writes it, its first history event and its first run in one
//! transaction; the engine does the rest.

use std::sync::Arc;

use nimbus_core::Error;
use nimbus_core::db::{execution, execution_event, execution_run, state_machine};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::{Value, json};

use crate::asl::{Machine, State};

/// Parsed definitions, by execution id (a definition never changes under an
/// execution: it keeps the one it started with).
static PARSED: std::sync::LazyLock<moka::sync::Cache<String, Arc<Machine>>> =
    std::sync::LazyLock::new(|| moka::sync::Cache::builder().max_capacity(10_000).build());

/// The definition an execution runs.
pub fn machine_of(exec: &execution::Model) -> Result<Arc<Machine>, String> {
    if let Some(m) = PARSED.get(&exec.id) {
        return Ok(m);
    }
    let v: Value = serde_json::from_str(&exec.definition).map_err(|e| e.to_string())?;
    let m = Arc::new(Machine::parse(&v).map_err(|e| e.to_string())?);
    PARSED.insert(exec.id.clone(), m.clone());
    Ok(m)
}

/// A scope: the path from the top machine to a branch or a Map's processor, as
/// (state, branch) pairs; JSON in the runs' rows, so any state name is safe in it.
type Scope = Vec<(String, Option<usize>)>;

/// The scope of a child of `state` (a Parallel's `branch`, or a Map's processor).
pub fn child_scope(parent: &str, state: &str, branch: Option<usize>) -> String {
    let mut s: Scope = serde_json::from_str(parent).unwrap_or_default();
    s.push((state.to_string(), branch));
    serde_json::to_string(&s).expect("scopes serialise")
}

/// The top scope.
pub const TOP: &str = "[]";

/// The machine a scope names within `m`.
pub fn scope<'a>(m: &'a Machine, scope: &str) -> Option<&'a Machine> {
    let path: Scope = serde_json::from_str(scope).ok()?;
    let mut cur = m;
    for (state, branch) in path {
        cur = match (cur.states.get(&state)?, branch) {
            (State::Parallel(p), Some(b)) => p.branches.get(b)?,
            (State::Map(m), None) => &m.processor,
            _ => return None,
        };
    }
    Some(cur)
}

/// Ends a running execution (`status`), with an error for FAILED and TIMED_OUT, and
/// drops its runs. A finished execution is left as it is.
pub async fn end(
    db: &DatabaseConnection,
    id: &str,
    status: &str,
    error: Option<(&str, &str)>,
) -> Result<(), sea_orm::DbErr> {
    let turn = nimbus_core::db::group::turn(db).await?;
    let txn = turn.txn();
    let Some(exec) = execution::Entity::find_by_id(id.to_string())
        .one(txn)
        .await?
        .filter(|e| e.status == "RUNNING")
    else {
        return turn.commit().await;
    };
    let mut events = crate::history::Events::new(&exec);
    let kind = match status {
        "ABORTED" => "ExecutionAborted",
        "TIMED_OUT" => "ExecutionTimedOut",
        _ => "ExecutionFailed",
    };
    events.push(
        kind,
        None,
        json!({"error": error.map(|e| e.0), "cause": error.map(|e| e.1)}),
    );
    let moved = execution::Entity::update_many()
        .col_expr(execution::Column::Status, Expr::value(status))
        .col_expr(
            execution::Column::StoppedAt,
            Expr::value(nimbus_core::now_ms()),
        )
        .col_expr(
            execution::Column::Error,
            Expr::value(error.map(|e| e.0.to_string())),
        )
        .col_expr(
            execution::Column::Cause,
            Expr::value(error.map(|e| e.1.to_string())),
        )
        .filter(execution::Column::Id.eq(id))
        .filter(execution::Column::Status.eq("RUNNING"))
        .exec(txn)
        .await?
        .rows_affected;
    if moved == 1 {
        execution_run::Entity::delete_many()
            .filter(execution_run::Column::ExecutionId.eq(id))
            .exec(txn)
            .await?;
        events.commit(txn).await?;
    }
    turn.commit().await
}

/// Ends the executions past their machine's `TimeoutSeconds`.
pub async fn time_out_overdue(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    let now = nimbus_core::now_ms();
    let overdue = execution::Entity::find()
        .filter(execution::Column::Status.eq("RUNNING"))
        .filter(execution::Column::DeadlineAt.lt(now))
        .limit(100)
        .all(db)
        .await?;
    for e in overdue {
        end(
            db,
            &e.id,
            "TIMED_OUT",
            Some((
                "States.Timeout",
                "the execution ran past its TimeoutSeconds",
            )),
        )
        .await?;
    }
    Ok(())
}

/// A machine by tenant and name, or 404.
pub async fn machine(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    name: &str,
) -> Result<state_machine::Model, Error> {
    state_machine::Entity::find()
        .filter(state_machine::Column::TenantId.eq(tenant_id))
        .filter(state_machine::Column::Name.eq(name))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("StateMachine", name))
}

/// The tenant's machines, by name.
pub async fn machines(
    db: &DatabaseConnection,
    tenant_id: &str,
) -> Result<Vec<state_machine::Model>, Error> {
    Ok(state_machine::Entity::find()
        .filter(state_machine::Column::TenantId.eq(tenant_id))
        .order_by_asc(state_machine::Column::Name)
        .all(db)
        .await?)
}

/// A new run of `execution` at `state` of `scope`, due now; `parent` and `slot` for
/// a Parallel's branch or a Map's item (`ready` false: a Map item queued beyond
/// `MaxConcurrency`).
pub fn new_run(
    execution: &str,
    parent: Option<(&str, usize)>,
    scope: String,
    state: String,
    input: &Value,
    ready: bool,
) -> execution_run::ActiveModel {
    execution_run::ActiveModel {
        id: Set(nimbus_core::new_id()),
        execution_id: Set(execution.into()),
        parent: Set(parent.map(|p| p.0.to_string())),
        slot: Set(parent.map_or(0, |p| p.1 as i32)),
        scope: Set(scope),
        state: Set(state),
        input: Set(input.to_string()),
        status: Set(if ready { "ready" } else { "queued" }.into()),
        due_at: Set(nimbus_core::now_ms()),
        lease_until: Set(0),
        attempts: Set("[]".into()),
        pending: Set(0),
        result: Set(None),
        error: Set(None),
        cause: Set(None),
    }
}

/// Checks a definition (400 naming the state when it is refused).
pub fn check(definition: &Value) -> Result<Machine, Error> {
    Machine::parse(definition).map_err(|e| Error::Invalid(format!("definition: {e}")))
}

/// Creates a state machine.
pub async fn create(
    db: &DatabaseConnection,
    tenant_id: &str,
    name: &str,
    definition: &Value,
    max_machines: u64,
) -> Result<state_machine::Model, Error> {
    nimbus_core::model::validate_name("state machine", name)?;
    check(definition)?;
    let n = state_machine::Entity::find()
        .filter(state_machine::Column::TenantId.eq(tenant_id))
        .count(db)
        .await?;
    if n >= max_machines {
        return Err(Error::LimitExceeded(format!(
            "the tenant has {n} state machines; the limit is {max_machines}"
        )));
    }
    let now = nimbus_core::now_ms();
    let m = state_machine::ActiveModel {
        id: Set(nimbus_core::new_id()),
        tenant_id: Set(tenant_id.into()),
        name: Set(name.into()),
        definition: Set(definition.to_string()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    match m.insert(db).await {
        Ok(m) => Ok(m),
        Err(e) if nimbus_core::db::is_unique_violation(&e) => Err(Error::Conflict(format!(
            "state machine '{name}' already exists"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Replaces a machine's definition (running executions keep theirs).
pub async fn update(
    db: &DatabaseConnection,
    tenant_id: &str,
    name: &str,
    definition: &Value,
) -> Result<state_machine::Model, Error> {
    check(definition)?;
    let m = machine(db, tenant_id, name).await?;
    let mut am: state_machine::ActiveModel = m.into();
    am.definition = Set(definition.to_string());
    am.updated_at = Set(nimbus_core::now_ms());
    Ok(am.update(db).await?)
}

/// Deletes a machine; its running executions are aborted.
pub async fn delete(db: &DatabaseConnection, tenant_id: &str, name: &str) -> Result<(), Error> {
    let m = machine(db, tenant_id, name).await?;
    let running = execution::Entity::find()
        .filter(execution::Column::MachineId.eq(&m.id))
        .filter(execution::Column::Status.eq("RUNNING"))
        .all(db)
        .await?;
    for e in running {
        end(
            db,
            &e.id,
            "ABORTED",
            Some(("States.Aborted", "its state machine was deleted")),
        )
        .await?;
    }
    state_machine::Entity::delete_by_id(m.id).exec(db).await?;
    Ok(())
}

/// Starts an execution of `m` with `input`. With a `name` already used for `m`, the
/// existing execution is the answer (the start is idempotent). Returns it and
/// whether it is new.
pub async fn start(
    db: &DatabaseConnection,
    m: &state_machine::Model,
    input: &Value,
    name: Option<&str>,
    max_running: u64,
) -> Result<(execution::Model, bool), Error> {
    if let Some(n) = name {
        nimbus_core::model::validate_name("execution name", n)?;
        if let Some(e) = execution::Entity::find()
            .filter(execution::Column::MachineId.eq(&m.id))
            .filter(execution::Column::Name.eq(n))
            .one(db)
            .await?
        {
            if serde_json::from_str::<Value>(&e.input).ok().as_ref() != Some(input) {
                return Err(Error::Conflict(format!(
                    "execution '{n}' exists with another input"
                )));
            }
            return Ok((e, false));
        }
    }
    let running = execution::Entity::find()
        .filter(execution::Column::TenantId.eq(&m.tenant_id))
        .filter(execution::Column::Status.eq("RUNNING"))
        .count(db)
        .await?;
    if running >= max_running {
        return Err(Error::LimitExceeded(format!(
            "the tenant has {running} running executions; the limit is {max_running}"
        )));
    }
    let parsed = check(&serde_json::from_str(&m.definition).unwrap_or(Value::Null))?;
    let id = nimbus_core::new_id();
    let now = nimbus_core::now_ms();
    let exec = execution::Model {
        id: id.clone(),
        tenant_id: m.tenant_id.clone(),
        machine_id: m.id.clone(),
        machine_name: m.name.clone(),
        name: name.map_or_else(|| id.clone(), str::to_string),
        definition: m.definition.clone(),
        status: "RUNNING".into(),
        input: input.to_string(),
        output: None,
        error: None,
        cause: None,
        started_at: now,
        stopped_at: None,
        deadline_at: parsed.timeout_seconds.map(|s| now + crate::seconds_ms(s)),
        events: 0,
    };
    let turn = nimbus_core::db::group::turn(db).await?;
    let txn = turn.txn();
    let made = execution::ActiveModel::from(exec.clone()).insert(txn).await;
    match made {
        Ok(_) => {}
        Err(e) if nimbus_core::db::is_unique_violation(&e) => {
            turn.rollback().await?;
            // Started at the same moment under the same name: that one is it.
            return Box::pin(start(db, m, input, name, max_running)).await;
        }
        Err(e) => return Err(e.into()),
    }
    let mut events = crate::history::Events::new(&exec);
    events.push("ExecutionStarted", None, json!({"input": input}));
    events.push(
        "StateEntered",
        Some(&parsed.start_at),
        json!({"input": input}),
    );
    events.commit(txn).await?;
    new_run(&id, None, TOP.into(), parsed.start_at.clone(), input, true)
        .insert(txn)
        .await?;
    turn.commit().await?;
    crate::signal::wake();
    let exec = execution::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the execution just made is gone")))?;
    Ok((exec, true))
}

/// An execution of the tenant's, or 404.
pub async fn execution(
    db: &DatabaseConnection,
    tenant_id: &str,
    id: &str,
) -> Result<execution::Model, Error> {
    execution::Entity::find_by_id(id.to_string())
        .one(db)
        .await?
        .filter(|e| e.tenant_id == tenant_id)
        .ok_or_else(|| Error::not_found("Execution", id))
}

/// A machine's executions, newest first, optionally of one status.
pub async fn executions(
    db: &DatabaseConnection,
    m: &state_machine::Model,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<execution::Model>, Error> {
    let mut q = execution::Entity::find().filter(execution::Column::MachineId.eq(&m.id));
    if let Some(s) = status {
        if !["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"].contains(&s) {
            return Err(Error::Invalid(format!(
                "status must be RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED, not '{s}'"
            )));
        }
        q = q.filter(execution::Column::Status.eq(s));
    }
    Ok(q.order_by_desc(execution::Column::StartedAt)
        .limit(limit)
        .all(db)
        .await?)
}

/// An execution's history, in order, from event `after` on.
pub async fn history(
    db: &DatabaseConnection,
    exec: &execution::Model,
    after: i32,
    limit: u64,
) -> Result<Vec<execution_event::Model>, Error> {
    Ok(execution_event::Entity::find()
        .filter(execution_event::Column::ExecutionId.eq(&exec.id))
        .filter(execution_event::Column::Seq.gte(after))
        .order_by_asc(execution_event::Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}

/// Stops a running execution (ABORTED); a finished one is left as it is.
pub async fn stop(
    db: &DatabaseConnection,
    exec: &execution::Model,
    error: Option<&str>,
    cause: Option<&str>,
) -> Result<(), Error> {
    end(
        db,
        &exec.id,
        "ABORTED",
        Some((
            error.unwrap_or("States.Aborted"),
            cause.unwrap_or("stopped by a caller"),
        )),
    )
    .await?;
    Ok(())
}
