//! Making a plan's changes, in order.

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::plan::{Action, Plan};
use crate::cli::Client;

impl Action {
    /// The API call that makes this change: method, path and body.
    fn request(&self) -> (Method, String, Option<Value>) {
        let body = |b: &Value| Some(b.clone());
        match self {
            Action::CreateFunction { body: b } => (Method::POST, "/v1/functions".into(), body(b)),
            Action::UpdateCode { name, body: b } => {
                (Method::PUT, format!("/v1/functions/{name}/code"), body(b))
            }
            Action::Patch { name, body: b } => {
                (Method::PATCH, format!("/v1/functions/{name}"), body(b))
            }
            Action::Online { name, online } => {
                let verb = if *online { "online" } else { "offline" };
                (
                    Method::POST,
                    format!("/v1/functions/{name}/{verb}"),
                    Some(json!({})),
                )
            }
            Action::Publish { name } => (
                Method::POST,
                format!("/v1/functions/{name}/versions"),
                Some(json!({"description": "nimbus apply"})),
            ),
            Action::PutAlias {
                function,
                alias,
                body: b,
            } => (
                Method::PUT,
                format!("/v1/functions/{function}/aliases/{alias}"),
                body(b),
            ),
            Action::DeleteAlias { function, alias } => (
                Method::DELETE,
                format!("/v1/functions/{function}/aliases/{alias}"),
                None,
            ),
            Action::AddTrigger { function, body: b } => (
                Method::POST,
                format!("/v1/functions/{function}/triggers"),
                body(b),
            ),
            Action::DeleteTrigger { function, id } => (
                Method::DELETE,
                format!("/v1/functions/{function}/triggers/{id}"),
                None,
            ),
            Action::DeleteFunction { name } => {
                (Method::DELETE, format!("/v1/functions/{name}"), None)
            }
            Action::PutNetwork { body: b } => (Method::PUT, "/v1/network".into(), body(b)),
            Action::CreateBucket { name } => {
                (Method::PUT, format!("/v1/buckets/{name}"), Some(json!({})))
            }
            Action::CreateMachine { body: b } => {
                (Method::POST, "/v1/state-machines".into(), body(b))
            }
            Action::UpdateMachine { name, body: b } => {
                (Method::PUT, format!("/v1/state-machines/{name}"), body(b))
            }
            Action::DeleteMachine { name } => {
                (Method::DELETE, format!("/v1/state-machines/{name}"), None)
            }
        }
    }
}

/// Makes each change of the plan in order, waiting for the task of each change
/// that starts one; says each on stderr as it is done.
pub async fn apply(c: &Client, plan: &Plan) -> anyhow::Result<()> {
    for ch in &plan.changes {
        let (method, path, body) = ch.action.request();
        let (_, answer) = c.call_patiently(method, &path, body, &[]).await?;
        if let Some(id) = answer["task_id"].as_str() {
            c.wait_task(id, &ch.what)
                .await
                .with_context(|| format!("{} {}", ch.sign, ch.what))?;
        }
        eprintln!("done: {} {}", ch.sign, ch.what);
    }
    Ok(())
}
