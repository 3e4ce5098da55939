//! Making a plan's changes, in order.

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::plan::{Action, Plan};
use crate::cli::Client;

/// Makes each change of the plan in order, waiting for each task; says each on
/// stderr as it is done.
pub async fn apply(c: &Client, plan: &Plan) -> anyhow::Result<()> {
    for ch in &plan.changes {
        let task = |v: &Value| v["task_id"].as_str().map(String::from);
        let waited = match &ch.action {
            Action::CreateFunction { body } => task(
                &c.call(Method::POST, "/v1/functions", Some(body.clone()))
                    .await?
                    .1,
            ),
            Action::UpdateCode { name, body } => task(
                &c.call(
                    Method::PUT,
                    &format!("/v1/functions/{name}/code"),
                    Some(body.clone()),
                )
                .await?
                .1,
            ),
            Action::Patch { name, body } => task(
                &c.call(
                    Method::PATCH,
                    &format!("/v1/functions/{name}"),
                    Some(body.clone()),
                )
                .await?
                .1,
            ),
            Action::Online { name, online } => {
                let verb = if *online { "online" } else { "offline" };
                c.call(
                    Method::POST,
                    &format!("/v1/functions/{name}/{verb}"),
                    Some(json!({})),
                )
                .await?;
                None
            }
            Action::Publish { name } => task(
                &c.call(
                    Method::POST,
                    &format!("/v1/functions/{name}/versions"),
                    Some(json!({"description": "nimbus apply"})),
                )
                .await?
                .1,
            ),
            Action::PutAlias {
                function,
                alias,
                body,
            } => {
                c.call(
                    Method::PUT,
                    &format!("/v1/functions/{function}/aliases/{alias}"),
                    Some(body.clone()),
                )
                .await?;
                None
            }
            Action::DeleteAlias { function, alias } => {
                c.call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/aliases/{alias}"),
                    None,
                )
                .await?;
                None
            }
            Action::AddTrigger { function, body } => {
                c.call(
                    Method::POST,
                    &format!("/v1/functions/{function}/triggers"),
                    Some(body.clone()),
                )
                .await?;
                None
            }
            Action::DeleteTrigger { function, id } => {
                c.call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/triggers/{id}"),
                    None,
                )
                .await?;
                None
            }
            Action::DeleteFunction { name } => task(
                &c.call(Method::DELETE, &format!("/v1/functions/{name}"), None)
                    .await?
                    .1,
            ),
            Action::PutNetwork { body } => {
                c.call(Method::PUT, "/v1/network", Some(body.clone()))
                    .await?;
                None
            }
            Action::CreateMachine { body } => {
                c.call(Method::POST, "/v1/state-machines", Some(body.clone()))
                    .await?;
                None
            }
            Action::UpdateMachine { name, body } => {
                c.call(
                    Method::PUT,
                    &format!("/v1/state-machines/{name}"),
                    Some(body.clone()),
                )
                .await?;
                None
            }
            Action::DeleteMachine { name } => {
                c.call(Method::DELETE, &format!("/v1/state-machines/{name}"), None)
                    .await?;
                None
            }
        };
        if let Some(id) = waited {
            c.wait_task(&id, &ch.what)
                .await
                .with_context(|| format!("{} {}", ch.sign, ch.what))?;
        }
        eprintln!("done: {} {}", ch.sign, ch.what);
    }
    Ok(())
}
