//! An asynchronous invocation as the API, its callbacks and its watches show it.

use nimbus_core::db::invocation;
use serde_json::{Value, json};

/// The event as JSON for a destination: itself if it is JSON, else base64.
pub(crate) fn event_json(event: &[u8]) -> Value {
    serde_json::from_slice(event).unwrap_or_else(|_| {
        use base64::Engine as _;
        Value::String(base64::engine::general_purpose::STANDARD.encode(event))
    })
}

/// An asynchronous invocation as the API (and its callbacks and watches) shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct InvocationView {
    /// Its id.
    pub invocation_id: String,
    /// The function.
    pub function: String,
    /// The qualifier it was queued with, if any.
    pub qualifier: Option<String>,
    /// `Queued`, `Running`, `Succeeded`, `Retrying`, `DeadLettered`…
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The result (JSON, or base64 if it is not), once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The last error document.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Every attempt's error.
    #[schema(value_type = Vec<Object>)]
    pub errors: Value,
    /// The version that ran.
    pub executed_version: Option<String>,
    /// `api`, `timer`, `queue`, `storage`, `replay`…
    pub origin: String,
    /// The dead letter it replays, if any.
    pub replay_of: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, when the first attempt started.
    pub started_at: Option<String>,
    /// RFC 3339, when it ended.
    pub finished_at: Option<String>,
}

impl From<&invocation::Model> for InvocationView {
    fn from(i: &invocation::Model) -> Self {
        let body = |b: &Option<Vec<u8>>| b.as_deref().map(event_json);
        InvocationView {
            invocation_id: i.id.clone(),
            function: i.function_name.clone(),
            qualifier: i.qualifier.clone(),
            state: i.state.clone(),
            attempts: i.attempts,
            result: body(&i.result),
            error: i
                .error
                .as_deref()
                .map(|e| serde_json::from_str::<Value>(e).unwrap_or(json!(e))),
            errors: serde_json::from_str::<Value>(&i.errors).unwrap_or(json!([])),
            executed_version: i.executed_version.clone(),
            origin: i.origin.clone(),
            replay_of: i.replay_of.clone(),
            created_at: nimbus_core::rfc3339(i.created_at),
            updated_at: nimbus_core::rfc3339(i.updated_at),
            started_at: i.started_at.map(nimbus_core::rfc3339),
            finished_at: i.finished_at.map(nimbus_core::rfc3339),
        }
    }
}

/// An invocation as the API shows it, as JSON.
pub fn to_json(i: &invocation::Model) -> Value {
    serde_json::to_value(InvocationView::from(i)).unwrap_or(Value::Null)
}
