//! `Parallel` and `Map`: a state whose work is runs of its own (a branch each, an
//! item each). The first time the state runs it asks for its children; once they
//! are all done, their outputs in order are its result.

use nimbus_core::db::execution_run;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

use crate::asl::{Map, PathField, Transition};
use crate::paths::{PathError, filter, put_result, select, template};
use crate::step::{Failure, Step};

/// A Parallel: spawns its branches the first time; once they are all done,
/// their outputs in order are its result.
pub(crate) async fn gather(
    db: &DatabaseConnection,
    run: &execution_run::Model,
    p: &crate::asl::Parallel,
    input: &Value,
    context: &Value,
) -> Result<Result<Step, Failure>, sea_orm::DbErr> {
    let branches = p.branches.len();
    let children = children(db, run).await?;
    if children.is_empty() {
        let eff = match filter(&p.io.input_path, input, context).and_then(|e| {
            match &p.result.parameters {
                Some(t) => template(t, &e, context),
                None => Ok(e),
            }
        }) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e.into())),
        };
        let scopes = (0..branches)
            .map(|b| {
                (
                    crate::store::child_scope(&run.scope, &run.state, Some(b)),
                    eff.clone(),
                )
            })
            .collect();
        return Ok(Ok(Step::Spawn(scopes, 0)));
    }
    Ok(finish_children(
        children,
        input,
        context,
        &p.result,
        &p.io.output_path,
        &p.then,
    ))
}

/// A Map: spawns one child per item the first time; once all are done, their
/// outputs in order are its result.
pub(crate) async fn map(
    db: &DatabaseConnection,
    run: &execution_run::Model,
    m: &Map,
    input: &Value,
    context: &Value,
) -> Result<Result<Step, Failure>, sea_orm::DbErr> {
    let no_params = crate::asl::ResultIo {
        parameters: None,
        result_selector: m.result.result_selector.clone(),
        result_path: m.result.result_path.clone(),
    };
    let children = children(db, run).await?;
    if children.is_empty() {
        let spawn = (|| -> Result<Step, PathError> {
            let eff = filter(&m.io.input_path, input, context)?;
            let items = match &m.items_path {
                PathField::Path(p) => select(p, &eff, context)?,
                _ => eff.clone(),
            };
            let Value::Array(items) = items else {
                return Err(PathError {
                    error: "States.Runtime",
                    cause: "ItemsPath does not select an array".into(),
                });
            };
            if items.len() > crate::MAX_MAP_ITEMS {
                return Err(PathError {
                    error: "States.Runtime",
                    cause: format!(
                        "a Map over {} items; the limit is {}",
                        items.len(),
                        crate::MAX_MAP_ITEMS
                    ),
                });
            }
            let scope = crate::store::child_scope(&run.scope, &run.state, None);
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let item_input = match &m.item_selector {
                    Some(sel) => {
                        let mut ctx = context.clone();
                        ctx["Map"] = json!({"Item": {"Index": i, "Value": item}});
                        template(sel, &eff, &ctx)?
                    }
                    None => item,
                };
                out.push((scope.clone(), item_input));
            }
            Ok(Step::Spawn(out, m.max_concurrency))
        })();
        return Ok(match spawn {
            // Nothing to map: the result is [] at once.
            Ok(Step::Spawn(items, _)) if items.is_empty() => finish_children(
                vec![],
                input,
                context,
                &no_params,
                &m.io.output_path,
                &m.then,
            ),
            other => other.map_err(Failure::from),
        });
    }
    Ok(finish_children(
        children,
        input,
        context,
        &no_params,
        &m.io.output_path,
        &m.then,
    ))
}

async fn children(
    db: &DatabaseConnection,
    run: &execution_run::Model,
) -> Result<Vec<execution_run::Model>, sea_orm::DbErr> {
    execution_run::Entity::find()
        .filter(execution_run::Column::Parent.eq(&run.id))
        .order_by_asc(execution_run::Column::Slot)
        .all(db)
        .await
}

/// Children all done: their outputs in order (or the first failure).
#[allow(clippy::too_many_arguments)]
fn finish_children(
    children: Vec<execution_run::Model>,
    input: &Value,
    context: &Value,
    result_io: &crate::asl::ResultIo,
    output_path: &PathField,
    then: &Transition,
) -> Result<Step, Failure> {
    if let Some(f) = children.iter().find(|c| c.status == "failed") {
        return Err(Failure {
            error: f
                .error
                .clone()
                .unwrap_or_else(|| "States.BranchFailed".into()),
            cause: f.cause.clone().unwrap_or_default(),
        });
    }
    let results: Vec<Value> = children
        .iter()
        .map(|c| {
            c.result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null)
        })
        .collect();
    let result = Value::Array(results);
    let result = match &result_io.result_selector {
        Some(sel) => template(sel, &result, context)?,
        None => result,
    };
    let out = put_result(&result_io.result_path, input, result)?;
    let out = filter(output_path, &out, context)?;
    Ok(match then {
        Transition::Next(n) => Step::Next(n.clone(), out),
        Transition::End => Step::End(out),
    })
}
