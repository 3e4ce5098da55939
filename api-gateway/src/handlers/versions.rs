//! Versions and aliases of a function: publishing (a task, answered with 202) and
//! the aliases that route traffic between versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nimbus_core::Error;
use nimbus_core::db::{alias, function};
use nimbus_core::model::{self, FunctionState, Role};
use proto::bus::change_event;
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
use serde::Deserialize;
use serde_json::json;
use workflow::TaskKind;

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::tasks::{claim, invalidate_local, refuse_if_deleting, start_task};
use crate::views::{AliasBody, AliasList, AliasView, TaskAccepted, VersionList, VersionView};

/// Body of `POST /v1/functions/{name}/versions`.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    #[serde(default)]
    pub(crate) description: String,
}

/// `POST /v1/functions/{name}/versions`: snapshot `$LATEST` as version N.
#[utoipa::path(post, path = "/v1/functions/{name}/versions", tag = "versions", request_body = Publish, params(("name" = String, Path, description = "Function name")), responses((status = 202, description = "Accepted: task id; the task result names the version", body = TaskAccepted), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)), security(("bearer" = [])))]
pub async fn publish(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    // The body is optional here.
    let body: Publish = if body.iter().all(u8::is_ascii_whitespace) {
        Publish::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("the body is not valid: {e}")))?
    };
    if body.description.len() > 256 {
        return Err(Error::Invalid("description is limited to 256 characters".into()).into());
    }
    let tenant = caller.tenant()?.clone();
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    if f.state != FunctionState::Active.as_str() {
        return Err(Error::Conflict(format!(
            "function '{name}' is {}; only an Active function can be published",
            f.state
        ))
        .into());
    }
    let task_id = nimbus_core::new_id();
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    claim(txn, &f, &task_id, None).await?;
    let params = json!({"function_id": f.id, "description": body.description});
    let (t, _) = start_task(&state, turn, task_id, TaskKind::PublishVersion, &f, params).await?;
    Ok(crate::accepted(TaskAccepted { task_id: t.id }))
}

/// `GET /v1/functions/{name}/versions`.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "versions", params(("name" = String, Path, description = "Function name")), responses((status = 200, description = "Versions, oldest first", body = VersionList), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_versions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let f = crate::queries::find_function(&state.db, caller.tenant()?, &name).await?;
    let vs = crate::queries::versions_of(&state.db, &f.id).await?;
    Ok(axum::Json(VersionList {
        versions: vs
            .iter()
            .map(|v| VersionView::new(v, &state.secrets, caller.role))
            .collect(),
    })
    .into_response())
}

/// Body of `PUT /v1/functions/{name}/aliases/{alias}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAlias {
    pub(crate) version: String,
    #[serde(default)]
    pub(crate) additional_version_weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub(crate) description: String,
}

/// `PUT /v1/functions/{name}/aliases/{alias}`: create or move an alias (immediate).
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", request_body = PutAlias, params(("name" = String, Path), ("alias" = String, Path)), responses((status = 200, description = "The moved alias", body = AliasBody), (status = 201, description = "The new alias", body = AliasBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn put_alias(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, alias_name)): Path<(String, String)>,
    Json(body): Json<PutAlias>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    model::validate_name("alias", &alias_name)?;
    if alias_name.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Invalid(
            "an alias name cannot be a number: numbers name versions".into(),
        )
        .into());
    }
    if body.description.len() > 256 {
        return Err(Error::Invalid("description is limited to 256 characters".into()).into());
    }
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    refuse_if_deleting(&f)?;
    let parse_version = |v: &str| -> Result<i32, Error> {
        v.parse::<i32>()
            .ok()
            .filter(|n| *n >= 1 && *n <= f.latest_version)
            .ok_or_else(|| Error::not_found("Version", format!("{name}:{v}")))
    };
    if body.version != "$LATEST" {
        parse_version(&body.version)?;
    } else if !body.additional_version_weights.is_empty() {
        return Err(
            Error::Invalid("an alias of $LATEST cannot have weighted versions".into()).into(),
        );
    }
    let mut total = 0.0;
    for (v, w) in &body.additional_version_weights {
        parse_version(v)?;
        if *v == body.version {
            return Err(Error::Invalid(format!(
                "version {v} is the alias's main version; it cannot also be weighted"
            ))
            .into());
        }
        if !(w.is_finite() && *w > 0.0 && *w <= 1.0) {
            return Err(
                Error::Invalid(format!("the weight of version {v} must be in (0, 1]")).into(),
            );
        }
        total += w;
    }
    if body.additional_version_weights.len() > 1 {
        return Err(Error::Invalid("an alias routes to at most two versions".into()).into());
    }
    if total > 1.0 + 1e-9 {
        return Err(Error::Invalid("the additional weights sum to more than 1".into()).into());
    }
    let now = nimbus_core::now_ms();
    let weights =
        serde_json::to_string(&body.additional_version_weights).map_err(anyhow::Error::from)?;
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    let existing = crate::queries::alias_of(txn, &f.id, &alias_name).await?;
    let (a, status) = match existing {
        Some(a) => {
            let mut am = a.into_active_model();
            am.version = Set(body.version.clone());
            am.additional_weights = Set(weights);
            am.description = Set(body.description.clone());
            am.updated_at = Set(now);
            (am.update(txn).await?, StatusCode::OK)
        }
        None => {
            let am = alias::ActiveModel {
                id: Set(nimbus_core::new_id()),
                function_id: Set(f.id.clone()),
                name: Set(alias_name.clone()),
                version: Set(body.version.clone()),
                additional_weights: Set(weights),
                description: Set(body.description.clone()),
                created_at: Set(now),
                updated_at: Set(now),
            };
            match am.insert(txn).await {
                Ok(a) => (a, StatusCode::CREATED),
                Err(e) if nimbus_core::db::is_unique_violation(&e) => {
                    return Err(Error::Conflict(format!(
                        "alias '{alias_name}' was created concurrently; retry"
                    ))
                    .into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let change =
        workflow::outbox::put_change(txn, change_event::Kind::Function, &tenant.id, &f.name)
            .await?;
    turn.commit().await?;
    workflow::outbox::flush_rows_in_background(&state.db, &state.bus, vec![change]);
    invalidate_local(&state, &tenant.id, &f.name).await;
    Ok((
        status,
        axum::Json(AliasBody {
            alias: AliasView::from(&a),
        }),
    )
        .into_response())
}

async fn find_alias(
    state: &AppState,
    f: &function::Model,
    alias_name: &str,
) -> Result<alias::Model, Error> {
    crate::queries::alias_of(&state.db, &f.id, alias_name)
        .await?
        .ok_or_else(|| Error::not_found("Alias", format!("{}:{alias_name}", f.name)))
}

/// `GET /v1/functions/{name}/aliases/{alias}`.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", params(("name" = String, Path), ("alias" = String, Path)), responses((status = 200, description = "The alias", body = AliasBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_alias(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, alias_name)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let f = crate::queries::find_function(&state.db, caller.tenant()?, &name).await?;
    let a = find_alias(&state, &f, &alias_name).await?;
    Ok(axum::Json(AliasBody {
        alias: AliasView::from(&a),
    })
    .into_response())
}

/// `GET /v1/functions/{name}/aliases`.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "aliases", params(("name" = String, Path, description = "Function name")), responses((status = 200, description = "Aliases", body = AliasList), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_aliases(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let f = crate::queries::find_function(&state.db, caller.tenant()?, &name).await?;
    let list = crate::queries::aliases_of(&state.db, &f.id).await?;
    Ok(axum::Json(AliasList {
        aliases: list.iter().map(AliasView::from).collect(),
    })
    .into_response())
}

/// `DELETE /v1/functions/{name}/aliases/{alias}`.
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "aliases", params(("name" = String, Path), ("alias" = String, Path)), responses((status = 204, description = "Deleted"), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_alias(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, alias_name)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let f = crate::queries::find_function(&state.db, &tenant, &name).await?;
    let a = find_alias(&state, &f, &alias_name).await?;
    let turn = nimbus_core::db::group::turn(&state.db).await?;
    let txn = turn.txn();
    alias::Entity::delete_by_id(a.id).exec(txn).await?;
    let change =
        workflow::outbox::put_change(txn, change_event::Kind::Function, &tenant.id, &f.name)
            .await?;
    turn.commit().await?;
    workflow::outbox::flush_rows_in_background(&state.db, &state.bus, vec![change]);
    invalidate_local(&state, &tenant.id, &f.name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
