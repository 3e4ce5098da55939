//! Lambda's names and shapes: account numbers, ARNs, function names in their four
//! forms, runtimes, and the `FunctionConfiguration` every function answer carries.

use std::collections::BTreeMap;

use base64::Engine as _;
use nimbus_core::db::{function, version};
use nimbus_core::model::{FunctionState, Role, Runtime};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::LambdaError;
use crate::AppState;
use crate::caller::TenantInfo;

/// The 12-digit account number of a tenant, as ARNs carry it. Derived from the
/// tenant's id, so it is stable and needs no storage; a request's ARN is only ever
/// compared with its caller's own number.
pub fn account_id(tenant_id: &str) -> String {
    let d = Sha256::digest(tenant_id.as_bytes());
    let n = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % 1_000_000_000_000;
    format!("{n:012}")
}

/// A function's ARN, with a qualifier if given.
pub fn function_arn(state: &AppState, tenant: &TenantInfo, name: &str, q: Option<&str>) -> String {
    let base = format!(
        "arn:aws:lambda:{}:{}:function:{name}",
        state.region.name,
        account_id(&tenant.id)
    );
    match q {
        Some(q) => format!("{base}:{q}"),
        None => base,
    }
}

/// A function named as Lambda allows: `name`, `name:qualifier`,
/// `account:function:name[:qualifier]` or
/// `arn:aws:lambda:region:account:function:name[:qualifier]`. Returns the name and
/// the qualifier. An ARN of another account or region is not found.
pub fn parse_function_name(
    state: &AppState,
    tenant: &TenantInfo,
    given: &str,
) -> Result<(String, Option<String>), LambdaError> {
    let not_found = || LambdaError::not_found(format!("Function not found: {given}"));
    let parts: Vec<&str> = given.split(':').collect();
    let (account, region, rest): (Option<&str>, Option<&str>, &[&str]) = match parts[..] {
        ["arn", _partition, "lambda", region, account, "function", ..] => {
            (Some(account), Some(region), &parts[6..])
        }
        [account, "function", ..] => (Some(account), None, &parts[2..]),
        _ => (None, None, &parts[..]),
    };
    let (name, qualifier) = match rest {
        [name] => (*name, None),
        [name, q] => (*name, Some(q.to_string())),
        _ => {
            return Err(LambdaError::invalid(format!(
                "'{given}' is not a function name, a partial ARN or an ARN"
            )));
        }
    };
    if account.is_some_and(|a| a != account_id(&tenant.id))
        || region.is_some_and(|r| r != state.region.name)
    {
        return Err(not_found());
    }
    if name.is_empty() || qualifier.as_deref().is_some_and(str::is_empty) {
        return Err(LambdaError::invalid(format!("'{given}' names no function")));
    }
    Ok((name.to_string(), qualifier))
}

/// The function a request about the function itself names: its name, with no
/// qualifier (a version or alias cannot be changed or configured alone).
pub fn unqualified_name(
    state: &AppState,
    tenant: &TenantInfo,
    given: &str,
) -> Result<String, LambdaError> {
    let (name, q) = parse_function_name(state, tenant, given)?;
    if q.is_some() {
        return Err(LambdaError::invalid(
            "give the function's name without a version or alias here",
        ));
    }
    Ok(name)
}

/// The tenant's function a request names without a qualifier, or 404.
pub async fn unqualified_function(
    state: &AppState,
    tenant: &TenantInfo,
    given: &str,
) -> Result<function::Model, LambdaError> {
    let name = unqualified_name(state, tenant, given)?;
    crate::queries::find_function(&state.db, tenant, &name)
        .await
        .map_err(LambdaError::from_core)
}

/// The name and qualifier of a request that may give the qualifier twice (in the
/// name and as `Qualifier`): they must agree.
pub fn name_and_qualifier(
    state: &AppState,
    tenant: &TenantInfo,
    given: &str,
    qualifier: Option<&str>,
) -> Result<(String, Option<String>), LambdaError> {
    let (name, from_name) = parse_function_name(state, tenant, given)?;
    match (from_name, qualifier) {
        (Some(a), Some(b)) if a != b => Err(LambdaError::invalid(
            "The derived qualifier from the function name does not match the specified qualifier.",
        )),
        (Some(a), _) => Ok((name, Some(a))),
        (None, b) => Ok((name, b.map(str::to_string))),
    }
}

/// A Lambda runtime name to the runtime that runs it.
pub fn runtime_of(name: &str) -> Result<Runtime, LambdaError> {
    let r = if name.starts_with("python3") {
        Runtime::Python3
    } else if name.starts_with("nodejs") {
        Runtime::Nodejs
    } else if name == "provided" || name.starts_with("provided.") {
        Runtime::Provided
    } else if let Ok(r) = name.parse::<Runtime>() {
        r
    } else {
        return Err(LambdaError::invalid(format!(
            "Value {name} at 'runtime' failed to satisfy constraint: runtimes here are python3.x, nodejsNN.x, provided, provided.al2, provided.al2023 and wasm"
        )));
    };
    Ok(r)
}

/// Lambda's timestamp form: `2026-11-30T12:00:00.000+0000`.
pub fn last_modified(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}

/// A hex SHA-256 as Lambda shows it: base64 of the bytes.
pub fn code_sha256(hex_digest: &str) -> String {
    hex::decode(hex_digest)
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .unwrap_or_default()
}

/// `Environment`.
#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Environment {
    pub variables: BTreeMap<String, String>,
}

/// `EphemeralStorage`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EphemeralStorage {
    pub size: u32,
}

/// `TracingConfig`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TracingConfig {
    pub mode: &'static str,
}

/// `FunctionConfiguration`: what GetFunctionConfiguration, CreateFunction, the
/// updates, PublishVersion and the lists answer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    pub function_name: String,
    pub function_arn: String,
    pub runtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub handler: String,
    pub code_size: i64,
    pub description: String,
    pub timeout: u32,
    pub memory_size: u32,
    pub last_modified: String,
    pub code_sha256: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    pub tracing_config: TracingConfig,
    pub revision_id: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason_code: Option<&'static str>,
    pub last_update_status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_status_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_status_reason_code: Option<&'static str>,
    pub package_type: &'static str,
    pub architectures: [&'static str; 1],
    pub ephemeral_storage: EphemeralStorage,
}

/// The runtime's name to show: what the caller gave, else a Lambda name for it.
fn runtime_name(f: &function::Model, runtime: &str) -> String {
    if let Some(n) = &f.runtime_name {
        return n.clone();
    }
    match runtime.parse::<Runtime>() {
        Ok(Runtime::Python3) => "python3.12".into(),
        Ok(Runtime::Nodejs) => "nodejs20.x".into(),
        Ok(Runtime::Provided) => "provided.al2023".into(),
        _ => runtime.into(),
    }
}

/// The environment a caller may see: values for developers and up.
fn environment(
    state: &AppState,
    sealed: &str,
    function_id: &str,
    role: Role,
) -> Option<Environment> {
    if role < Role::Developer {
        return None;
    }
    let v = crate::env::open_env(&state.secrets, sealed, function_id);
    let variables: BTreeMap<String, String> = serde_json::from_value(v).unwrap_or_default();
    (!variables.is_empty()).then_some(Environment { variables })
}

impl FunctionConfiguration {
    /// `$LATEST` of a function.
    pub fn latest(state: &AppState, tenant: &TenantInfo, f: &function::Model, role: Role) -> Self {
        let fs = FunctionState::parse(&f.state);
        let (st, reason_code) = match fs {
            Some(FunctionState::Active) => ("Active", None),
            Some(FunctionState::Failed) => ("Failed", Some("InternalError")),
            Some(FunctionState::Pending) => ("Pending", Some("Creating")),
            // Lambda has no deleting state: the function is going.
            Some(FunctionState::Deleting) | None => ("Inactive", Some("Idle")),
        };
        let (update, update_code) = match (fs, &f.pending_task) {
            (Some(FunctionState::Failed), _) => ("Failed", Some("InternalError")),
            (_, Some(_)) => ("InProgress", None),
            _ => ("Successful", None),
        };
        let in_progress = update == "InProgress";
        FunctionConfiguration {
            function_name: f.name.clone(),
            function_arn: function_arn(state, tenant, &f.name, None),
            runtime: runtime_name(f, &f.runtime),
            role: f.role.clone(),
            handler: f.handler.clone(),
            code_size: f.code_size,
            description: f.description.clone(),
            timeout: (f.timeout_ms.max(0) as u32).div_ceil(1000),
            memory_size: f.memory_mb.max(0) as u32,
            last_modified: last_modified(f.updated_at),
            code_sha256: f
                .code_sha256
                .as_deref()
                .map(code_sha256)
                .unwrap_or_default(),
            version: "$LATEST".into(),
            environment: environment(state, &f.env, &f.id, role),
            tracing_config: TracingConfig {
                mode: "PassThrough",
            },
            revision_id: format!("{}-{}", f.id, f.revision),
            state: st,
            state_reason: f.state_reason.clone().filter(|_| reason_code.is_some()),
            state_reason_code: reason_code,
            last_update_status: update,
            last_update_status_reason: in_progress
                .then(|| "The function is being created or updated.".to_string()),
            last_update_status_reason_code: update_code,
            package_type: "Zip",
            architectures: ["x86_64"],
            ephemeral_storage: EphemeralStorage { size: 512 },
        }
    }

    /// A published version of a function.
    pub fn version(
        state: &AppState,
        tenant: &TenantInfo,
        f: &function::Model,
        v: &version::Model,
        role: Role,
    ) -> Self {
        let number = v.version.to_string();
        FunctionConfiguration {
            function_name: f.name.clone(),
            function_arn: function_arn(state, tenant, &f.name, Some(&number)),
            runtime: runtime_name(f, &v.runtime),
            role: f.role.clone(),
            handler: v.handler.clone(),
            code_size: v.code_size,
            description: v.description.clone(),
            timeout: (v.timeout_ms.max(0) as u32).div_ceil(1000),
            memory_size: v.memory_mb.max(0) as u32,
            last_modified: last_modified(v.created_at),
            code_sha256: code_sha256(&v.code_sha256),
            version: number,
            environment: environment(state, &v.env, &f.id, role),
            tracing_config: TracingConfig {
                mode: "PassThrough",
            },
            revision_id: format!("{}-v{}", f.id, v.version),
            state: "Active",
            state_reason: None,
            state_reason_code: None,
            last_update_status: "Successful",
            last_update_status_reason: None,
            last_update_status_reason_code: None,
            package_type: "Zip",
            architectures: ["x86_64"],
            ephemeral_storage: EphemeralStorage { size: 512 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_twelve_digits_and_stable() {
        let a = account_id("tenant-1");
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(a, account_id("tenant-1"));
        assert_ne!(a, account_id("tenant-2"));
    }

    #[test]
    fn runtimes_map_to_ours() {
        assert_eq!(runtime_of("python3.12").unwrap(), Runtime::Python3);
        assert_eq!(runtime_of("nodejs20.x").unwrap(), Runtime::Nodejs);
        assert_eq!(runtime_of("provided.al2023").unwrap(), Runtime::Provided);
        assert_eq!(runtime_of("provided").unwrap(), Runtime::Provided);
        assert!(runtime_of("java21").is_err());
    }

    #[test]
    fn timestamps_and_digests_as_lambda_shows_them() {
        assert_eq!(last_modified(0), "1970-01-01T00:00:00.000+0000");
        assert_eq!(
            code_sha256("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
