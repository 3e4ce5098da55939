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
use crate::paths::{filter, put_result, select, template};
use crate::step::{Failure, Step};

/// A Task's call waits this long for a concurrency slot before the run backs off.
const SLOT_WAIT: Duration = Duration::from_millis(500);
/// Times a call whose node was lost is made again before the Task fails.
const NODE_LOSS_RETRIES: usize = 3;

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
    let deadline = deadline(t, &eff, context)?;
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
        // A Task's own retries and deferrals are not the caller's throttles.
        attempt: 1,
        trace: None,
    };
    let invoked = call_retrying_node_loss(router, call);
    let invoked = match &deadline {
        Some((s, error)) => match tokio::time::timeout(Duration::from_secs(*s), invoked).await {
            Ok(r) => r,
            Err(_) => {
                return Err(Failure {
                    error: error.to_string(),
                    cause: if *error == "States.Timeout" {
                        format!("the Task ran past its TimeoutSeconds ({s})")
                    } else {
                        format!(
                            "no heartbeat within HeartbeatSeconds ({s}): a function sends \
                                 none while it runs, so this bounds the whole call"
                        )
                    },
                });
            }
        },
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
        Err(InvokeError::QuotaExceeded(why)) => {
            return Err(Failure {
                error: "Lambda.TooManyRequestsException".into(),
                cause: why,
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

/// How long the Task may run, and the error when it does not end in time:
/// `TimeoutSeconds` (`States.Timeout`), or `HeartbeatSeconds` when it is shorter
/// (`States.HeartbeatTimeout`: a function sends no heartbeats while it runs, so the
/// whole call must end within it). Either may come from the input (`…Path`).
fn deadline(
    t: &crate::asl::Task,
    eff: &Value,
    context: &Value,
) -> Result<Option<(u64, &'static str)>, Failure> {
    let seconds = |fixed: Option<u64>, path: &Option<String>, key: &str| {
        Ok::<_, Failure>(match (fixed, path) {
            (Some(s), _) => Some(s),
            (None, Some(p)) => match select(p, eff, context)?.as_u64() {
                Some(s) if s > 0 => Some(s),
                _ => {
                    return Err(Failure {
                        error: "States.Runtime".into(),
                        cause: format!("{key} '{p}' is not a positive whole number of seconds"),
                    });
                }
            },
            (None, None) => None,
        })
    };
    let timeout = seconds(
        t.timeout_seconds,
        &t.timeout_seconds_path,
        "TimeoutSecondsPath",
    )?;
    let heartbeat = seconds(
        t.heartbeat_seconds,
        &t.heartbeat_seconds_path,
        "HeartbeatSecondsPath",
    )?;
    let cap = |s: u64| s.min(crate::MAX_SECONDS);
    Ok(match (timeout, heartbeat) {
        (Some(to), Some(hb)) if hb < to => Some((cap(hb), "States.HeartbeatTimeout")),
        (None, Some(hb)) => Some((cap(hb), "States.HeartbeatTimeout")),
        (Some(to), _) => Some((cap(to), "States.Timeout")),
        (None, None) => None,
    })
}

/// Calls through the router. A node lost during the call (the call may or may not
/// have run) is the platform's failure, not the function's: like a worker lost
/// mid-Task, the call is made again (Tasks run at least once), on another node, a
/// few times before the Task fails with `Lambda.ServiceException`.
async fn call_retrying_node_loss(
    router: &Router,
    call: Call,
) -> Result<Option<invoker::router::Invoked>, InvokeError> {
    let mut delay = Duration::from_millis(250);
    for _ in 0..NODE_LOSS_RETRIES {
        let again = Call {
            tenant_id: call.tenant_id.clone(),
            function: call.function.clone(),
            qualifier: call.qualifier.clone(),
            event: call.event.clone(),
            request_id: nimbus_core::new_id(),
            client_context: call.client_context.clone(),
            ..call
        };
        match router.invoke_with(again, Some(SLOT_WAIT)).await {
            Err(InvokeError::Unavailable(why)) => {
                tracing::warn!(function = %call.function, error = %why, "a Task's node was lost; calling again");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    router.invoke_with(call, Some(SLOT_WAIT)).await
}

/// `name`, `name:qualifier` or a Lambda ARN → (function, qualifier).
pub fn resource(r: &str) -> Option<(String, Option<String>)> {
    let rest = match r.strip_prefix("arn:") {
        Some(arn) => {
            // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
            let parts: Vec<&str> = arn.splitn(5, ':').collect();
            if parts.len() != 5 || parts[1] != "lambda" {
                return None;
            }
            parts[4].strip_prefix("function:")?
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

#[cfg(test)]
mod tests {
    use super::resource;

    #[test]
    fn resources_name_functions() {
        let f = |n: &str, q: Option<&str>| Some((n.to_string(), q.map(str::to_string)));
        assert_eq!(resource("fn"), f("fn", None));
        assert_eq!(resource("fn:live"), f("fn", Some("live")));
        assert_eq!(
            resource("arn:aws:lambda:us-east-1:123456789012:function:fn"),
            f("fn", None)
        );
        assert_eq!(
            resource("arn:aws:lambda:ap-guangzhou:123456789012:function:fn:$LATEST"),
            f("fn", Some("$LATEST"))
        );
        assert_eq!(resource("arn:aws:sns:us-east-1:123456789012:topic"), None);
        assert_eq!(resource("arn:aws:lambda:us-east-1:1:layer:x"), None);
        assert_eq!(resource("not a name"), None);
    }
}
