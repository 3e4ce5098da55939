//! A function's environment variables: sealed at rest to their function, opened for
//! display, and shown in full only to developers and up.

use std::collections::BTreeMap;

use nimbus_core::Error;
use nimbus_core::model::Role;
use nimbus_core::secrets::SecretBox;
use serde_json::Value;

/// Opens sealed environment variables for display.
pub fn open_env(secrets: &SecretBox, sealed: &str, function_id: &str) -> Value {
    match secrets
        .open_for(sealed, &nimbus_core::secrets::env_place(function_id))
        .map(|s| serde_json::from_str::<Value>(&s))
    {
        Ok(Ok(v)) => v,
        _ => {
            tracing::error!("environment variables do not open with this region's secrets key");
            Value::Null
        }
    }
}

/// Seals environment variables for storage, to their function.
pub fn seal_env(
    secrets: &SecretBox,
    env: &BTreeMap<String, String>,
    function_id: &str,
) -> Result<String, Error> {
    Ok(secrets.seal_for(
        &serde_json::to_string(env).map_err(anyhow::Error::from)?,
        &nimbus_core::secrets::env_place(function_id),
    ))
}

/// What a caller may see of a function's environment: its values for developers
/// and up; for the invoker role, only the names.
pub fn shown_env(env: Value, role: Role) -> Value {
    if role >= Role::Developer {
        return env;
    }
    match env {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, _)| (k, Value::from("(hidden: needs the developer role)")))
                .collect(),
        ),
        other => other,
    }
}
