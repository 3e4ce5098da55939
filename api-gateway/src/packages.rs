//! Code packages by digest, between regions.
//!
//! A package deployed in one region can be deployed in another without uploading it
//! again: the request names its SHA-256 (and the region that has it). The gateway
//! uses its own region's copy if the tenant already deployed that digest here;
//! otherwise it fetches the package once from the named region's
//! `GET /v1/packages/{sha256}`, with the caller's own credentials (identity is global),
//! checks the digest, and goes on as with an upload. A region serves a package only
//! to a tenant that deployed it there, so a digest is never a way into another
//! tenant's code.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nimbus_core::Error;
use nimbus_core::db::{function, region, version};
use nimbus_core::model::{self, Role};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, QueryTrait};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::caller::{Caller, TenantInfo};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::Path;

/// How long fetching a package from another region may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `sha256` is a lowercase hex SHA-256.
pub fn valid_digest(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether the tenant has a function or a version in this region with this code.
async fn owned(state: &AppState, tenant: &TenantInfo, sha256: &str) -> Result<bool, Error> {
    let functions = function::Entity::find()
        .filter(function::Column::TenantId.eq(&tenant.id))
        .filter(function::Column::CodeSha256.eq(sha256))
        .count(&state.db)
        .await?;
    if functions > 0 {
        return Ok(true);
    }
    let theirs = function::Entity::find()
        .select_only()
        .column(function::Column::Id)
        .filter(function::Column::TenantId.eq(&tenant.id))
        .into_query();
    let n = version::Entity::find()
        .filter(version::Column::FunctionId.in_subquery(theirs))
        .filter(version::Column::CodeSha256.eq(sha256))
        .count(&state.db)
        .await?;
    Ok(n > 0)
}

/// This region's copy of a package the tenant deployed here.
async fn local(state: &AppState, sha256: &str) -> Result<Option<Bytes>, Error> {
    state
        .store
        .get(&code_service::package_key(sha256))
        .await
        .map_err(|e| Error::Unavailable(format!("object storage: {e:#}")))
}

/// The package `sha256` for the tenant: this region's copy if the tenant deployed it
/// here, else fetched once from `from_region` with `credentials` (the caller's
/// `Authorization`). The bytes' digest is checked.
pub async fn obtain(
    state: &AppState,
    tenant: &TenantInfo,
    sha256: &str,
    from_region: Option<&str>,
    credentials: &str,
) -> Result<Bytes, Error> {
    if !valid_digest(sha256) {
        return Err(Error::Invalid(
            "code.sha256 must be 64 lowercase hex digits".into(),
        ));
    }
    if owned(state, tenant, sha256).await?
        && let Some(bytes) = local(state, sha256).await?
    {
        return Ok(bytes);
    }
    let Some(from) = from_region else {
        return Err(Error::not_found("Package", sha256));
    };
    if from == state.region.name {
        return Err(Error::not_found("Package", sha256));
    }
    let r = region::Entity::find_by_id(from.to_string())
        .one(&state.db)
        .await?
        .ok_or_else(|| Error::not_found("Region", from))?;
    let cannot = |why: String| {
        Error::Unavailable(format!(
            "could not fetch package {sha256} from region {from}: {why}"
        ))
    };
    let resp = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| Error::Internal(e.into()))?
        .get(format!(
            "{}/v1/packages/{sha256}",
            r.url.trim_end_matches('/')
        ))
        .header(reqwest::header::AUTHORIZATION, credentials)
        .header("x-nimbus-tenant", &tenant.name)
        .send()
        .await
        .map_err(|e| cannot(e.to_string()))?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Err(Error::not_found("Package", sha256)),
        s => return Err(cannot(format!("it answered {s}"))),
    }
    if resp
        .content_length()
        .is_some_and(|n| n > model::MAX_ZIP_BYTES as u64)
    {
        return Err(Error::PayloadTooLarge(
            "the code package is larger than 50 MiB zipped".into(),
        ));
    }
    let bytes = resp.bytes().await.map_err(|e| cannot(e.to_string()))?;
    if hex::encode(Sha256::digest(&bytes)) != sha256 {
        return Err(cannot("the bytes do not have that digest".into()));
    }
    tracing::info!(
        sha256,
        from,
        bytes = bytes.len(),
        "package copied from another region"
    );
    Ok(bytes)
}

/// `GET /v1/packages/{sha256}`: a code package the tenant deployed in this region, as
/// a zip (another region fetches it this way).
#[utoipa::path(get, path = "/v1/packages/{sha256}", tag = "functions", params(("sha256" = String, Path, description = "The package's SHA-256, lowercase hex")), responses((status = 200, description = "The zip", content_type = "application/zip"), (status = 400, description = "InvalidRequest", body = ErrorBody), (status = 401, description = "Unauthenticated", body = ErrorBody), (status = 403, description = "Forbidden", body = ErrorBody), (status = 404, description = "No such package of the tenant's in this region", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_package(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Developer)?;
    let tenant = caller.tenant()?;
    if !valid_digest(&sha256) || !owned(&state, tenant, &sha256).await? {
        return Err(Error::not_found("Package", sha256).into());
    }
    let bytes = local(&state, &sha256)
        .await?
        .ok_or_else(|| Error::not_found("Package", &sha256))?;
    Ok(([(header::CONTENT_TYPE, "application/zip")], bytes).into_response())
}
