//! Tokens, tenants, limits, API keys and the tenant network.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_core::db::{api_key, function, tenant};
use nimbus_core::model::{self, Limits, Role};
use nimbus_core::{Error, rfc3339};
use proto::bus::change_event;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{access_key_id, generate_key};
use crate::caller::{Caller, TenantInfo};
use crate::directory::{self, Change, Write};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::identity;
use crate::views::{
    KeyCreated, KeyList, KeySecrets, KeyView, NetworkBody, TenantBody, TenantCreated, TenantList,
    TenantView, TokenView,
};

/// `POST /v1/auth/token`: a JWT for the presented API key.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", responses((status = 200, description = "A JWT for the presented API key", body = TokenView), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn token(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    if !caller.via_api_key {
        return Err(Error::Forbidden(
            "tokens are minted from an API key, not from another token".into(),
        )
        .into());
    }
    let (token, exp) = state.auth.mint(&caller)?;
    Ok(axum::Json(TokenView {
        token,
        expires_at: rfc3339(exp as i64 * 1000),
    })
    .into_response())
}

/// `GET /v1/whoami`: who the credential is, so that a client (the console, `nimbus
/// login`) offers only what the role may do.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth", responses((status = 200, description = "The caller", body = WhoAmI), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn whoami(caller: Caller) -> ApiResult<Response> {
    Ok(axum::Json(WhoAmI {
        key_id: caller.key_id.clone(),
        role: caller.role.as_str().to_string(),
        tenant: caller.tenant.as_ref().map(|t| t.name.clone()),
        via_api_key: caller.via_api_key,
    })
    .into_response())
}

/// The caller, as `GET /v1/whoami` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The API key's id (a JWT's: the key it was minted from).
    pub key_id: String,
    /// `admin`, `owner`, `developer` or `invoker`.
    pub role: String,
    /// The caller's tenant; none for admins.
    pub tenant: Option<String>,
    /// Whether the credential is an API key (else a JWT).
    pub via_api_key: bool,
}

/// Body of `POST /v1/tenants`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    #[serde(default)]
    limits: Option<Limits>,
}

/// `POST /v1/tenants` (admin): the tenant and its first key, role owner.
#[utoipa::path(post, path = "/v1/tenants", tag = "admin", request_body = CreateTenant, responses((status = 201, description = "The tenant and its owner key, shown once", body = TenantCreated), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_tenant(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<CreateTenant>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    model::validate_name("tenant", &body.name)?;
    let limits = body.limits.unwrap_or_default();
    limits.validate()?;
    let now = nimbus_core::now_ms();
    let key = generate_key();
    let t = directory::tenant_row(nimbus_core::new_id(), body.name.clone(), &limits, now);
    let k = api_key::Model {
        id: key.id.clone(),
        tenant_id: Some(t.id.clone()),
        role: Role::Owner.as_str().into(),
        name: "owner".into(),
        secret_sha256: key.secret_sha256.clone(),
        created_at: now,
        revoked_at: None,
        aws_secret_sealed: Some(key.aws_secret_sealed(&state.identity_box)),
    };
    identity::write(
        &state,
        Write::CreateTenant {
            tenant: t.clone(),
            owner: k.clone(),
        },
    )
    .await?;
    tracing::info!(tenant = %t.name, "tenant created");
    let created_at = t.created_at;
    let info = TenantInfo::from(t);
    Ok((
        StatusCode::CREATED,
        axum::Json(TenantCreated {
            tenant: TenantView::new(&info, created_at),
            key: KeyView::new(&k, Some(&info.name)),
            secrets: KeySecrets {
                aws_access_key_id: access_key_id(&key.id),
                api_key: key.token,
                aws_secret_access_key: key.aws_secret,
                aws_region: state.region.name.clone(),
            },
        }),
    )
        .into_response())
}

/// `GET /v1/tenants` (admin).
#[utoipa::path(get, path = "/v1/tenants", tag = "admin", responses((status = 200, description = "Every tenant", body = TenantList), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_tenants(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let ts = tenant::Entity::find()
        .order_by_asc(tenant::Column::Name)
        .all(&state.db)
        .await?;
    let tenants = ts
        .into_iter()
        .map(|t| {
            let c = t.created_at;
            TenantView::new(&TenantInfo::from(t), c)
        })
        .collect();
    Ok(axum::Json(TenantList { tenants }).into_response())
}

/// `GET /v1/tenants/{tenant}`: admins see any tenant, others their own.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "admin", params(("tenant" = String, Path)), responses((status = 200, description = "The tenant", body = TenantBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_tenant(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if caller.role != Role::Admin
        && caller.tenant.as_ref().map(|t| t.name.as_str()) != Some(name.as_str())
    {
        return Err(Error::not_found("Tenant", name).into());
    }
    let t = crate::queries::tenant_by_name(&state.db, &name).await?;
    let c = t.created_at;
    Ok(axum::Json(TenantBody {
        tenant: TenantView::new(&TenantInfo::from(t), c),
    })
    .into_response())
}

/// `DELETE /v1/tenants/{tenant}` (admin). A tenant with functions is refused (409):
/// delete its functions first, so nothing of it is left running or stored.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "admin", params(("tenant" = String, Path)), responses((status = 204, description = "Deleted"), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_tenant(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let t = crate::queries::tenant_by_name(&state.db, &name).await?;
    let n = function::Entity::find()
        .filter(function::Column::TenantId.eq(&t.id))
        .count(&state.db)
        .await?;
    if n > 0 {
        return Err(Error::Conflict(format!(
            "tenant '{name}' still has {n} functions in region {}; delete them first",
            state.region.name
        ))
        .into());
    }
    // Functions are regional: with a global directory, every other region must have
    // none of the tenant's either.
    let credentials = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    identity::other_regions_have_none(&state, &name, credentials).await?;
    identity::write(
        &state,
        Write::DeleteTenant {
            tenant: name.clone(),
        },
    )
    .await?;
    tracing::info!(tenant = %name, "tenant deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v1/tenants/{tenant}/limits` (admin).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/limits", tag = "admin", request_body = nimbus_core::model::Limits, params(("tenant" = String, Path)), responses((status = 200, description = "The tenant with its new limits", body = TenantBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn set_limits(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(limits): Json<Limits>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    limits.validate()?;
    let changes = identity::write(
        &state,
        Write::SetLimits {
            tenant: name.clone(),
            limits,
        },
    )
    .await?;
    let t = changes
        .into_iter()
        .find_map(|c| match c {
            Change::Tenant { tenant } => Some(tenant),
            _ => None,
        })
        .ok_or_else(|| Error::not_found("Tenant", &name))?;
    let c = t.created_at;
    Ok(axum::Json(TenantBody {
        tenant: TenantView::new(&TenantInfo::from(t), c),
    })
    .into_response())
}

/// Body of `POST /v1/api-keys`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    role: String,
    name: String,
    /// Admins only: the tenant the key belongs to. Absent with role admin: a new admin key.
    #[serde(default)]
    tenant: Option<String>,
}

/// `POST /v1/api-keys`: owners make keys in their tenant; admins anywhere.
#[utoipa::path(post, path = "/v1/api-keys", tag = "admin", request_body = CreateKey, responses((status = 201, description = "The key, shown once", body = KeyCreated), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<CreateKey>,
) -> ApiResult<Response> {
    caller.require(Role::Owner)?;
    let role: Role = body.role.parse()?;
    model::validate_name("key name", &body.name)?;
    if role > caller.role {
        return Err(
            Error::Forbidden("a key cannot be given a role above its creator's".into()).into(),
        );
    }
    let tenant = match (caller.role, body.tenant.as_deref()) {
        (Role::Admin, Some(name)) => Some(TenantInfo::from(
            crate::queries::tenant_by_name(&state.db, name).await?,
        )),
        (Role::Admin, None) => caller.acting_for.clone(),
        (_, Some(name)) if caller.tenant.as_ref().is_some_and(|t| t.name == name) => {
            caller.tenant.clone()
        }
        (_, Some(name)) => return Err(Error::not_found("Tenant", name).into()),
        (_, None) => caller.tenant.clone(),
    };
    match (role, &tenant) {
        (Role::Admin, Some(_)) => {
            return Err(Error::Invalid("an admin key belongs to no tenant".into()).into());
        }
        (Role::Admin, None) if caller.role != Role::Admin => {
            return Err(Error::Forbidden("only an admin can create admin keys".into()).into());
        }
        (r, None) if r != Role::Admin => {
            return Err(
                Error::Invalid("name the tenant for this key with \"tenant\"".into()).into(),
            );
        }
        _ => {}
    }
    let key = generate_key();
    let k = api_key::Model {
        id: key.id.clone(),
        tenant_id: tenant.as_ref().map(|t| t.id.clone()),
        role: role.as_str().into(),
        name: body.name,
        secret_sha256: key.secret_sha256.clone(),
        created_at: nimbus_core::now_ms(),
        revoked_at: None,
        aws_secret_sealed: Some(key.aws_secret_sealed(&state.identity_box)),
    };
    identity::write(&state, Write::CreateKey { key: k.clone() }).await?;
    let made = KeyCreated {
        key: KeyView::new(&k, tenant.as_ref().map(|t| t.name.as_str())),
        secrets: KeySecrets {
            aws_access_key_id: access_key_id(&key.id),
            api_key: key.token,
            aws_secret_access_key: key.aws_secret,
            aws_region: state.region.name.clone(),
        },
    };
    Ok((StatusCode::CREATED, axum::Json(made)).into_response())
}

/// `GET /v1/api-keys`: the tenant's keys (admins: every key, or the acting tenant's).
#[utoipa::path(get, path = "/v1/api-keys", tag = "admin", responses((status = 200, description = "Keys, without secrets", body = KeyList), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_keys(State(state): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require(Role::Owner)?;
    let mut q = api_key::Entity::find().order_by_asc(api_key::Column::CreatedAt);
    let scope = if caller.role == Role::Admin {
        caller.acting_for.clone()
    } else {
        caller.tenant.clone()
    };
    if let Some(t) = &scope {
        q = q.filter(api_key::Column::TenantId.eq(&t.id));
    }
    let keys = q.all(&state.db).await?;
    let names: std::collections::HashMap<String, String> = tenant::Entity::find()
        .all(&state.db)
        .await?
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect();
    let api_keys = keys
        .iter()
        .map(|k| {
            KeyView::new(
                k,
                k.tenant_id
                    .as_ref()
                    .and_then(|t| names.get(t))
                    .map(String::as_str),
            )
        })
        .collect();
    Ok(axum::Json(KeyList { api_keys }).into_response())
}

/// `DELETE /v1/api-keys/{id}`: the key stops working at once, here and in every gateway.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "admin", params(("id" = String, Path)), responses((status = 204, description = "Revoked at once"), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody), (status = 404, description = "Not found, or another tenant's", body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Owner)?;
    let scope = if caller.role == Role::Admin {
        None
    } else {
        Some(caller.tenant()?.id.clone())
    };
    let changes = identity::write(
        &state,
        Write::RevokeKey {
            id: id.clone(),
            tenant_id: scope,
            at: nimbus_core::now_ms(),
        },
    )
    .await?;
    if !changes.is_empty() {
        tracing::info!(key = %id, "API key revoked");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/network`: the tenant's network and egress proxy.
#[utoipa::path(get, path = "/v1/network", tag = "network", responses((status = 200, description = "The tenant's network", body = NetworkBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_network(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let t = caller.tenant()?;
    let v = network_service::get(&state.db, &t.id)
        .await?
        .unwrap_or(network_service::Vpc {
            egress: vec![],
            proxy_endpoint: None,
        });
    Ok(axum::Json(NetworkBody::from(v)).into_response())
}

/// Body of `PUT /v1/network`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNetwork {
    egress: Vec<String>,
}

/// `PUT /v1/network`: sets the egress rules of the tenant's functions.
#[utoipa::path(put, path = "/v1/network", tag = "network", request_body = PutNetwork, responses((status = 200, description = "The tenant's network", body = NetworkBody), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 429, description = "TooManyRequests", body = ErrorBody)), security(("bearer" = [])))]
pub async fn put_network(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<PutNetwork>,
) -> ApiResult<Response> {
    caller.require(Role::Owner)?;
    let t = caller.tenant()?;
    let v = network_service::set_egress(&state.db, &t.id, body.egress).await?;
    // Routers pick up the new rules (this one at once); new instances get them.
    if let Some(dp) = &state.data_path {
        dp.router.invalidate_tenant(&t.id);
    }
    crate::queries::announce(&state, change_event::Kind::Tenant, &t.id, &t.name).await?;
    Ok(axum::Json(NetworkBody::from(v)).into_response())
}

/// Creates the first admin key if there is none, in the region's own database (with
/// a global directory, the directory makes it). Returns the key (to show once).
pub async fn bootstrap_admin(db: &DatabaseConnection) -> Result<Option<String>, Error> {
    let admins = api_key::Entity::find()
        .filter(api_key::Column::Role.eq(Role::Admin.as_str()))
        .count(db)
        .await?;
    if admins > 0 {
        return Ok(None);
    }
    let (key, token) = directory::admin_key_row("bootstrap-admin");
    let txn = nimbus_core::db::begin_write(db).await?;
    directory::apply_write(&txn, Write::CreateKey { key }).await?;
    txn.commit().await?;
    Ok(Some(token))
}
