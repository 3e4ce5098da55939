//! Triggers: created per function; the http kind is also served here, at
//! `/t/{tenant}{path}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts as _, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use invoker::router::{Call, MAX_PAYLOAD};
use nimbus_core::Error;
use nimbus_core::db::{tenant, trigger};
use nimbus_core::model::Role;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, EntityTrait as _, PaginatorTrait as _,
    QueryFilter as _, QueryOrder as _, Set,
};
use serde_json::Value;

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody, request_id};
use crate::extract::{Json, Path};
use crate::views::{TriggerBody, TriggerList, TriggerView};

/// Tells every gateway (and this one at once) that a function's triggers changed.
async fn announce(state: &AppState, tenant_id: &str, function: &str) -> Result<(), Error> {
    state.routes.invalidate_all();
    crate::queries::announce(
        state,
        proto::bus::change_event::Kind::Function,
        tenant_id,
        function,
    )
    .await
}

/// The tenant and the http trigger of a route.
async fn find_route(
    state: &AppState,
    tenant_name: &str,
    path: &str,
) -> Result<Option<Arc<(tenant::Model, trigger::Model)>>, Error> {
    let key = (tenant_name.to_string(), path.to_string());
    if let Some(hit) = state.routes.get(&key).await {
        return Ok(hit);
    }
    let found = match tenant::Entity::find()
        .filter(tenant::Column::Name.eq(tenant_name))
        .one(&state.db)
        .await?
    {
        None => None,
        Some(t) => trigger::Entity::find()
            .filter(trigger::Column::TenantId.eq(&t.id))
            .filter(trigger::Column::Route.eq(path))
            .one(&state.db)
            .await?
            .map(|trig| Arc::new((t, trig))),
    };
    state.routes.insert(key, found.clone()).await;
    Ok(found)
}

/// `POST /v1/functions/{name}/triggers`: adds a trigger (`http`, `timer` or `storage`).
#[utoipa::path(post, path = "/v1/functions/{name}/triggers", tag = "triggers",
    params(("name" = String, Path)),
    request_body(content = serde_json::Value, description = "{\"type\":\"http\",\"path\":\"/hello\",\"methods\":[\"GET\"],\"auth\":\"key|none\"}, {\"type\":\"timer\",\"cron\":\"*/5 * * * * *\"} or {\"type\":\"storage\",\"bucket\":\"uploads\",\"events\":[\"put\"],\"prefix\":\"img/\",\"suffix\":\".png\"}"),
    responses((status = 201, description = "The trigger", body = TriggerBody),
        (status = 400, description = "InvalidRequest: unknown type, bad cron, bad path", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 409, description = "The path is another trigger's", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    crate::queries::find_function(&state.db, &tenant, &name).await?;
    let spec = events::triggers::validate(&body).map_err(Error::Invalid)?;
    let count = trigger::Entity::find()
        .filter(trigger::Column::TenantId.eq(&tenant.id))
        .count(&state.db)
        .await?;
    tenant.within("triggers", count, tenant.limits.max_triggers)?;
    if spec.kind == "storage" {
        let bucket = spec.config["bucket"].as_str().unwrap_or_default();
        if !crate::queries::bucket_exists(&state, &tenant, bucket).await? {
            return Err(Error::not_found("Bucket", bucket).into());
        }
    }
    let t = trigger::ActiveModel {
        id: Set(nimbus_core::new_id()),
        tenant_id: Set(tenant.id.clone()),
        function_name: Set(name.clone()),
        kind: Set(spec.kind.into()),
        config: Set(spec.config.to_string()),
        route: Set(spec.route.clone()),
        created_at: Set(nimbus_core::now_ms()),
    }
    .insert(&state.db)
    .await
    .map_err(|e| -> Error {
        if nimbus_core::db::is_unique_violation(&e) {
            let route = spec.route.clone().unwrap_or_default();
            match route.strip_prefix("queue:") {
                Some(q) => {
                    Error::Conflict(format!("queue {q} already has a trigger in this tenant"))
                }
                None => Error::Conflict(format!(
                    "path {route} already has an http trigger in this tenant"
                )),
            }
        } else {
            e.into()
        }
    })?;
    announce(&state, &tenant.id, &name).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(TriggerBody {
            trigger: TriggerView::new(&t, &tenant.name),
        }),
    )
        .into_response())
}

/// `GET /v1/functions/{name}/triggers`.
#[utoipa::path(get, path = "/v1/functions/{name}/triggers", tag = "triggers",
    params(("name" = String, Path)),
    responses((status = 200, description = "The function's triggers", body = TriggerList),
        (status = 404, description = "No such function", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    crate::queries::find_function(&state.db, &tenant, &name).await?;
    let ts = trigger::Entity::find()
        .filter(trigger::Column::TenantId.eq(&tenant.id))
        .filter(trigger::Column::FunctionName.eq(&name))
        .order_by_asc(trigger::Column::CreatedAt)
        .all(&state.db)
        .await
        .map_err(Error::from)?;
    let triggers = ts
        .iter()
        .map(|t| TriggerView::new(t, &tenant.name))
        .collect();
    Ok(axum::Json(TriggerList { triggers }).into_response())
}

/// `DELETE /v1/functions/{name}/triggers/{id}`.
#[utoipa::path(delete, path = "/v1/functions/{name}/triggers/{id}", tag = "triggers",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such trigger", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?.clone();
    let r = trigger::Entity::delete_many()
        .filter(trigger::Column::Id.eq(&id))
        .filter(trigger::Column::TenantId.eq(&tenant.id))
        .filter(trigger::Column::FunctionName.eq(&name))
        .exec(&state.db)
        .await
        .map_err(Error::from)?;
    if r.rows_affected == 0 {
        return Err(Error::not_found("Trigger", &id).into());
    }
    announce(&state, &tenant.id, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `ANY /t/{tenant}/{path}`: an http trigger. The request becomes a proxy event; the
/// function's `{statusCode, headers, body, isBase64Encoded}` becomes the response.
pub async fn serve(
    State(state): State<Arc<AppState>>,
    Path((tenant_name, path)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let route = format!("/{}", path.trim_end_matches('/'));
    let not_found = || {
        ApiError::from(Error::not_found(
            "Route",
            format!("/t/{tenant_name}{route}"),
        ))
    };
    let found = find_route(&state, &tenant_name, &route)
        .await?
        .ok_or_else(not_found)?;
    let (t, trig) = (&found.0, &found.1);
    let cfg: Value = serde_json::from_str(&trig.config).unwrap_or_default();
    let method = req.method().as_str().to_string();
    if !cfg["methods"]
        .as_array()
        .is_some_and(|ms| ms.iter().any(|m| m == method.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not one of this route's methods"),
        ));
    }
    let (mut parts, body) = req.into_parts();
    if cfg["auth"] != "none" {
        let caller = Caller::from_request_parts(&mut parts, &state).await?;
        caller.require(Role::Invoker)?;
        if caller.tenant()?.id != t.id {
            return Err(not_found());
        }
    }
    let dp = state.data_path.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "this gateway has no data path",
        )
    })?;
    let body = axum::body::to_bytes(Body::new(body), MAX_PAYLOAD)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "the request body is larger than 6 MiB",
            )
        })?;
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let event = events::triggers::proxy_event(&method, &route, &headers, parts.uri.query(), &body);
    let done = dp
        .router
        .invoke(Call {
            tenant_id: t.id.clone(),
            tenant_max_concurrency: t.max_concurrency.max(0) as u32,
            function: trig.function_name.clone(),
            qualifier: None,
            event: event.to_string().into(),
            request_id: request_id(),
            dry_run: false,
            from_timer: false,
            tail_log: false,
            client_context: None,
            attempt: 0,
            trace: crate::error::trace(),
        })
        .await
        .map_err(ApiError::from)?
        .ok_or_else(not_found)?;
    if done.outcome.function_error.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "FunctionError",
            "the function raised an error",
        ));
    }
    let out = events::triggers::proxy_response(&done.outcome.result).map_err(|m| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "FunctionError",
            format!("the function's response: {m}"),
        )
    })?;
    let mut resp = Response::new(Body::from(out.body));
    *resp.status_mut() = StatusCode::from_u16(out.status).unwrap_or(StatusCode::OK);
    for (k, v) in out.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(&v)) {
            resp.headers_mut().append(k, v);
        }
    }
    Ok(resp)
}
