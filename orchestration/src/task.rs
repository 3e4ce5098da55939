//! The `Task` state: the function it names is called through the router, with its
//! quotas, like any invoke; its result or error is named as Step Functions names
//! them.

use std::time::Duration;

use bytes::Bytes;
use invoker::router::{Call, InvokeError, Router};
use nimbus_core::db::{execution, tenant};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::{Value, json};

use crate::asl::Transition;
use crate::paths::{filter, put_result, template};
use crate::step::{Failure, Step};

/// A Task's call waits this long for a concurrency slot before the run backs off.
const SLOT_WAIT: Duration = Duration::from_millis(500);

/// A Task: calls the function, then processes its result.
pub(crate) async fn task(
    router: &Router,
    db: &DatabaseConnection,
    exec: &execution::Model,
    t: &crate::asl::Task,
    input: &Value,
    context: &Value,
) -> Result<Step, Failure> {
    let eff = filter(&t.io.input_path, input, context)?;
    let eff = match &t.result.parameters {
        Some(tpl) => template(tpl, &eff, context)?,
        None => eff,
    };
    let integrated = t.resource == "arn:aws:states:::lambda:invoke";
    let (target, payload) = if integrated {
        let name = eff
            .get("FunctionName")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure {
                error: "States.Runtime".into(),
                cause: "lambda:invoke needs Parameters.FunctionName".into(),
            })?
            .to_string();
        (name, eff.get("Payload").cloned().unwrap_or(json!({})))
    } else {
        (t.resource.clone(), eff)
    };
    let (function, qualifier) = resource(&target).ok_or_else(|| Failure {
        error: "States.Runtime".into(),
        cause: format!("'{target}' does not name a function"),
    })?;
    let tenant_max = match tenant::Entity::find_by_id(exec.tenant_id.clone())
        .one(db)
        .await
    {
        Ok(Some(t)) => Ord::max(t.max_concurrency, 0) as u32,
        Ok(None) => {
            return Err(Failure {
                error: "States.Runtime".into(),
                cause: "the tenant no longer exists".into(),
            });
        }
        Err(e) => {
            return Err(Failure {
                error: "Lambda.ServiceException".into(),
                cause: e.to_string(),
            });
        }
    };
    let call = Call {
        tenant_id: exec.tenant_id.clone(),
        tenant_max_concurrency: tenant_max,
        function,
        qualifier,
        event: Bytes::from(payload.to_string()),
        request_id: nimbus_core::new_id(),
        dry_run: false,
        from_timer: false,
        tail_log: false,
        client_context: None,
    };
    let invoked = router.invoke_with(call, Some(SLOT_WAIT));
    let invoked = match t.timeout_seconds {
        Some(s) => {
            match tokio::time::timeout(Duration::from_secs(s.min(crate::MAX_SECONDS)), invoked)
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    return Err(Failure {
                        error: "States.Timeout".into(),
                        cause: format!("the Task ran past its TimeoutSeconds ({s})"),
                    });
                }
            }
        }
        None => invoked.await,
    };
    let (result, version) = match invoked {
        Ok(Some(done)) => {
            let body: Value = serde_json::from_slice(&done.outcome.result).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&done.outcome.result).into_owned())
            });
            if done.outcome.function_error.is_some() {
                return Err(Failure {
                    error: body
                        .get("errorType")
                        .and_then(Value::as_str)
                        .unwrap_or("Error")
                        .to_string(),
                    cause: body
                        .get("errorMessage")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| body.to_string()),
                });
            }
            (body, done.executed_version)
        }
        Ok(None) | Err(InvokeError::Concurrency(_)) => return Ok(Step::Defer),
        Err(InvokeError::Timeout(ms)) => {
            return Err(Failure {
                error: "States.Timeout".into(),
                cause: format!("the function timed out after {ms} ms"),
            });
        }
        Err(e @ InvokeError::NotFound { .. }) => {
            return Err(Failure {
                error: "Lambda.ResourceNotFoundException".into(),
                cause: e.to_string(),
            });
        }
        Err(e) => {
            return Err(Failure {
                error: "Lambda.ServiceException".into(),
                cause: e.to_string(),
            });
        }
    };
    let result = if integrated {
        json!({"Payload": result, "StatusCode": 200, "ExecutedVersion": version})
    } else {
        result
    };
    let result = match &t.result.result_selector {
        Some(sel) => template(sel, &result, context)?,
        None => result,
    };
    let out = put_result(&t.result.result_path, input, result)?;
    let out = filter(&t.io.output_path, &out, context)?;
    Ok(match &t.then {
        Transition::Next(n) => Step::Next(n.clone(), out),
        Transition::End => Step::End(out),
    })
}

/// `name`, `name:qualifier` or a Lambda ARN → (function, qualifier).
pub fn resource(r: &str) -> Option<(String, Option<String>)> {
    let rest = match r.strip_prefix("arn:") {
        Some(arn) => {
            // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            if parts.len() != 6 || parts[1] != "lambda" {
                return None;
            }
            parts[5].strip_prefix("function:")?
        }
        None => r,
    };
    let (name, q) = match rest.split_once(':') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (rest, None),
    };
    nimbus_core::model::validate_name("function", name).ok()?;
    Some((name.to_string(), q))
}
