//! Reading an ASL definition into [`crate::asl`]'s types, checked whole before a state
//! machine is stored: unknown fields, a `Next` that names no state, a state with
//! neither `Next` nor `End`, an unreachable state, a path or an intrinsic that does
//! not parse — each is refused with an error that names the state.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::asl::{
    Catcher, Choice, DefinitionError, Fail, Io, Machine, Map, OPERATORS, Parallel, Pass, PathField,
    ResultIo, Retrier, Rule, State, Succeed, Task, Test, Transition, Wait, WaitFor, refuse,
};

impl Machine {
    /// Parses and checks a whole definition.
    pub fn parse(definition: &Value) -> Result<Machine, DefinitionError> {
        let m = machine(definition, true)?;
        let mut seen = BTreeSet::new();
        m.unique_names(&mut seen)?;
        Ok(m)
    }
}

/// The fields each state type takes (besides `Type` and `Comment`).
fn allowed(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Task" => &[
            "Resource",
            "InputPath",
            "OutputPath",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "TimeoutSeconds",
            "TimeoutSecondsPath",
            "HeartbeatSeconds",
            "HeartbeatSecondsPath",
            "Retry",
            "Catch",
            "Next",
            "End",
        ],
        "Pass" => &[
            "InputPath",
            "OutputPath",
            "Parameters",
            "Result",
            "ResultPath",
            "Next",
            "End",
        ],
        "Choice" => &["InputPath", "OutputPath", "Choices", "Default"],
        "Wait" => &[
            "InputPath",
            "OutputPath",
            "Seconds",
            "Timestamp",
            "SecondsPath",
            "TimestampPath",
            "Next",
            "End",
        ],
        "Succeed" => &["InputPath", "OutputPath"],
        "Fail" => &["Error", "Cause", "ErrorPath", "CausePath"],
        "Parallel" => &[
            "InputPath",
            "OutputPath",
            "Parameters",
            "ResultSelector",
            "ResultPath",
            "Branches",
            "Retry",
            "Catch",
            "Next",
            "End",
        ],
        "Map" => &[
            "InputPath",
            "OutputPath",
            "Parameters",
            "ItemSelector",
            "ResultSelector",
            "ResultPath",
            "ItemsPath",
            "ItemProcessor",
            "Iterator",
            "MaxConcurrency",
            "Retry",
            "Catch",
            "Next",
            "End",
        ],
        _ => return None,
    })
}

/// Fields of ASL that Nimbus knows and does not offer: refused with their reason
/// rather than as unknown.
fn not_offered(kind: &str, key: &str) -> Option<String> {
    Some(match (kind, key) {
        (_, "Assign") => "variables (Assign) are not supported; pass data through the \
                          state's input and ResultPath"
            .into(),
        (_, "Arguments" | "Output" | "Condition" | "Items") => {
            format!("{key} belongs to JSONata, which is not supported; use JSONPath fields")
        }
        (_, "Credentials") => "Credentials (cross-account roles) are not supported".into(),
        (
            "Map",
            "ItemReader"
            | "ItemBatcher"
            | "ResultWriter"
            | "Label"
            | "ToleratedFailurePercentage"
            | "ToleratedFailurePercentagePath"
            | "ToleratedFailureCount"
            | "ToleratedFailureCountPath",
        ) => format!("{key} belongs to the Distributed Map; only the INLINE mode is supported"),
        _ => return None,
    })
}

/// Reads one field of a state's object with serde, naming the state on failure.
fn field<T: serde::de::DeserializeOwned>(
    name: &str,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<T>, DefinitionError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| refuse(name, format!("{key}: {e}"))),
    }
}

/// A path field, which may be `null`.
fn path_field(
    name: &str,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<PathField, DefinitionError> {
    match obj.get(key) {
        None => Ok(PathField::Absent),
        Some(Value::Null) => Ok(PathField::Null),
        Some(Value::String(p)) => {
            check_path(name, key, p)?;
            Ok(PathField::Path(p.clone()))
        }
        Some(other) => Err(refuse(
            name,
            format!("{key} must be a path or null, not {other}"),
        )),
    }
}

/// A JSONPath must parse (RFC 9535, with the `$$` context prefix of ASL).
fn check_path(name: &str, key: &str, p: &str) -> Result<(), DefinitionError> {
    let q = crate::paths::rfc9535(p);
    serde_json_path::JsonPath::parse(&q)
        .map(|_| ())
        .map_err(|e| refuse(name, format!("{key} '{p}' is not a JSONPath: {e}")))
}

/// Checks the `.$` fields of a payload template (`Parameters`, `ResultSelector`,
/// `ItemSelector`): each value is a path, a context path or an intrinsic function.
fn check_template(name: &str, key: &str, v: &Value) -> Result<(), DefinitionError> {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k.ends_with(".$") {
                    let Value::String(s) = v else {
                        return Err(refuse(
                            name,
                            format!("{key}: the value of '{k}' must be a path or an intrinsic"),
                        ));
                    };
                    if s.starts_with("States.") {
                        crate::paths::parse_intrinsic(s)
                            .map_err(|e| refuse(name, format!("{key}: '{k}': {e}")))?;
                    } else if s.starts_with('$') {
                        check_path(name, key, s)?;
                    } else {
                        return Err(refuse(
                            name,
                            format!("{key}: the value of '{k}' must start with $ or States."),
                        ));
                    }
                } else {
                    check_template(name, key, v)?;
                }
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|v| check_template(name, key, v)),
        _ => Ok(()),
    }
}

fn template(
    name: &str,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Value>, DefinitionError> {
    let v = obj.get(key).cloned();
    if let Some(v) = &v {
        check_template(name, key, v)?;
    }
    Ok(v)
}

fn io(name: &str, obj: &serde_json::Map<String, Value>) -> Result<Io, DefinitionError> {
    Ok(Io {
        input_path: path_field(name, obj, "InputPath")?,
        output_path: path_field(name, obj, "OutputPath")?,
    })
}

fn result_io(
    name: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<ResultIo, DefinitionError> {
    Ok(ResultIo {
        parameters: template(name, obj, "Parameters")?,
        result_selector: template(name, obj, "ResultSelector")?,
        result_path: path_field(name, obj, "ResultPath")?,
    })
}

fn transition(
    name: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<Transition, DefinitionError> {
    let next: Option<String> = field(name, obj, "Next")?;
    let end: Option<bool> = field(name, obj, "End")?;
    match (next, end) {
        (Some(n), None | Some(false)) => Ok(Transition::Next(n)),
        (None, Some(true)) => Ok(Transition::End),
        (Some(_), Some(true)) => Err(refuse(name, "has both Next and End")),
        (None, _) => Err(refuse(name, "needs Next or \"End\": true")),
    }
}

fn retries(
    name: &str,
    obj: &serde_json::Map<String, Value>,
) -> Result<(Vec<Retrier>, Vec<Catcher>), DefinitionError> {
    let retry: Vec<Retrier> = field(name, obj, "Retry")?.unwrap_or_default();
    let catch: Vec<Catcher> = field(name, obj, "Catch")?.unwrap_or_default();
    for r in &retry {
        if r.error_equals.is_empty() {
            return Err(refuse(name, "a Retry needs ErrorEquals"));
        }
        if r.interval_seconds < 0.0 || r.backoff_rate < 1.0 {
            return Err(refuse(
                name,
                "a Retry's IntervalSeconds must be ≥ 0 and its BackoffRate ≥ 1",
            ));
        }
    }
    for list in retry
        .iter()
        .map(|r| &r.error_equals)
        .chain(catch.iter().map(|c| &c.error_equals))
    {
        if list.is_empty() {
            return Err(refuse(name, "a Catch needs ErrorEquals"));
        }
        if list.iter().any(|e| e == "States.ALL") && list.len() > 1 {
            return Err(refuse(name, "States.ALL must be alone in its ErrorEquals"));
        }
    }
    for c in &catch {
        if let PathField::Path(p) = &c.result_path {
            check_path(name, "Catch.ResultPath", p)?;
        }
    }
    Ok((retry, catch))
}

/// Parses one Choice rule; `top`: a rule of `Choices` (which must have `Next`).
fn rule(name: &str, v: &Value, top: bool) -> Result<Rule, DefinitionError> {
    let Value::Object(obj) = v else {
        return Err(refuse(name, "a Choice rule must be an object"));
    };
    let next: Option<String> = field(name, obj, "Next")?;
    match (top, &next) {
        (true, None) => return Err(refuse(name, "every Choices rule needs Next")),
        (false, Some(_)) => return Err(refuse(name, "a nested Choice rule cannot have Next")),
        _ => {}
    }
    let mut keys: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "Next" | "Comment"))
        .collect();
    keys.sort_unstable();
    let test = match keys.as_slice() {
        ["And"] | ["Or"] => {
            let k = keys[0];
            let Some(Value::Array(list)) = obj.get(k) else {
                return Err(refuse(name, format!("{k} takes a list of rules")));
            };
            if list.is_empty() {
                return Err(refuse(name, format!("{k} needs at least one rule")));
            }
            let rules = list
                .iter()
                .map(|r| rule(name, r, false))
                .collect::<Result<Vec<_>, _>>()?;
            if k == "And" {
                Test::And(rules)
            } else {
                Test::Or(rules)
            }
        }
        ["Not"] => Test::Not(Box::new(rule(name, &obj["Not"], false)?)),
        [a, b] if (*a == "Variable") != (*b == "Variable") => {
            let op = if *a == "Variable" { *b } else { *a };
            if !OPERATORS.contains(&op) {
                return Err(refuse(name, format!("unknown Choice operator '{op}'")));
            }
            let Some(Value::String(variable)) = obj.get("Variable") else {
                return Err(refuse(name, "Variable must be a path"));
            };
            check_path(name, "Variable", variable)?;
            let operand = obj[op].clone();
            if op.ends_with("Path") {
                match &operand {
                    Value::String(p) => check_path(name, op, p)?,
                    _ => return Err(refuse(name, format!("{op} takes a path"))),
                }
            } else if op.starts_with("Is") || op.starts_with("Boolean") {
                if !operand.is_boolean() {
                    return Err(refuse(name, format!("{op} takes true or false")));
                }
            } else if op.starts_with("Numeric") {
                if !operand.is_number() {
                    return Err(refuse(name, format!("{op} takes a number")));
                }
            } else if !operand.is_string() {
                return Err(refuse(name, format!("{op} takes a string")));
            }
            Test::Compare {
                variable: variable.clone(),
                operator: op.to_string(),
                operand,
            }
        }
        _ => {
            return Err(refuse(
                name,
                format!(
                    "a Choice rule is Variable with one comparison operator, or And, Or or Not \
                     (got {})",
                    keys.join(", ")
                ),
            ));
        }
    };
    Ok(Rule { test, next })
}

/// `TimeoutSeconds` or `HeartbeatSeconds`: a positive whole number.
fn seconds(
    name: &str,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<u64>, DefinitionError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(s) if s > 0 => Ok(Some(s)),
            _ => Err(refuse(name, format!("{key} must be a positive integer"))),
        },
    }
}

/// `KeyPath`, which excludes `Key`.
fn seconds_path(
    name: &str,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, DefinitionError> {
    let pkey = format!("{key}Path");
    let p: Option<String> = field(name, obj, &pkey)?;
    if let Some(p) = &p {
        if obj.contains_key(key) {
            return Err(refuse(name, format!("{key} and {pkey} exclude each other")));
        }
        check_path(name, &pkey, p)?;
    }
    Ok(p)
}

/// A Task's `Resource` must be a function: its name (with a qualifier), its
/// Lambda ARN, or Step Functions' `arn:aws:states:::lambda:invoke`. Other service
/// integrations are refused by name.
fn check_resource(name: &str, r: &str) -> Result<(), DefinitionError> {
    if r == "arn:aws:states:::lambda:invoke" || crate::task::resource(r).is_some() {
        return Ok(());
    }
    let why = if r.starts_with("arn:aws:states:::") {
        "is a Step Functions service integration Nimbus does not offer (callbacks, \
         .sync jobs and AWS services are not available)"
    } else if r.starts_with("arn:aws:states:") {
        "is an activity, which Nimbus does not offer"
    } else {
        "does not name a function"
    };
    Err(refuse(
        name,
        format!(
            "the Resource '{r}' {why}; a Task calls a function by name, name:qualifier, \
             its ARN, or arn:aws:states:::lambda:invoke"
        ),
    ))
}

fn state(name: &str, v: &Value) -> Result<State, DefinitionError> {
    if name.is_empty() || name.chars().count() > 80 {
        return Err(refuse(name, "a state's name has 1 to 80 characters"));
    }
    let Value::Object(obj) = v else {
        return Err(refuse(name, "must be an object"));
    };
    let kind = match obj.get("Type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Err(refuse(name, "needs a Type")),
    };
    let fields = allowed(kind).ok_or_else(|| refuse(name, format!("unknown Type '{kind}'")))?;
    if let Some(why) = obj.keys().find_map(|k| not_offered(kind, k)) {
        return Err(refuse(name, why));
    }
    query_language(obj).map_err(|e| refuse(name, e))?;
    if let Some(bad) = obj.keys().find(|k| {
        !matches!(k.as_str(), "Type" | "Comment" | "QueryLanguage") && !fields.contains(&k.as_str())
    }) {
        return Err(refuse(name, format!("{kind} has no field '{bad}'")));
    }
    Ok(match kind {
        "Task" => {
            let resource: String = field(name, obj, "Resource")?
                .ok_or_else(|| refuse(name, "a Task needs a Resource"))?;
            check_resource(name, &resource)?;
            let (retry, catch) = retries(name, obj)?;
            State::Task(Box::new(Task {
                resource,
                io: io(name, obj)?,
                result: result_io(name, obj)?,
                timeout_seconds: seconds(name, obj, "TimeoutSeconds")?,
                timeout_seconds_path: seconds_path(name, obj, "TimeoutSeconds")?,
                heartbeat_seconds: seconds(name, obj, "HeartbeatSeconds")?,
                heartbeat_seconds_path: seconds_path(name, obj, "HeartbeatSeconds")?,
                retry,
                catch,
                then: transition(name, obj)?,
            }))
        }
        "Pass" => State::Pass(Pass {
            io: io(name, obj)?,
            result_value: obj.get("Result").cloned(),
            parameters: template(name, obj, "Parameters")?,
            result_path: path_field(name, obj, "ResultPath")?,
            then: transition(name, obj)?,
        }),
        "Choice" => {
            let list: Vec<Value> = field(name, obj, "Choices")?.unwrap_or_default();
            if list.is_empty() {
                return Err(refuse(name, "a Choice needs at least one rule in Choices"));
            }
            State::Choice(Choice {
                io: io(name, obj)?,
                choices: list
                    .iter()
                    .map(|r| rule(name, r, true))
                    .collect::<Result<_, _>>()?,
                default: field(name, obj, "Default")?,
            })
        }
        "Wait" => {
            let given: Vec<&str> = ["Seconds", "Timestamp", "SecondsPath", "TimestampPath"]
                .into_iter()
                .filter(|k| obj.contains_key(*k))
                .collect();
            let wait = match given.as_slice() {
                ["Seconds"] => WaitFor::Seconds(field(name, obj, "Seconds")?.expect("present")),
                ["Timestamp"] => {
                    let t: String = field(name, obj, "Timestamp")?.expect("present");
                    chrono::DateTime::parse_from_rfc3339(&t)
                        .map_err(|e| refuse(name, format!("Timestamp '{t}': {e}")))?;
                    WaitFor::Timestamp(t)
                }
                ["SecondsPath"] => {
                    let p: String = field(name, obj, "SecondsPath")?.expect("present");
                    check_path(name, "SecondsPath", &p)?;
                    WaitFor::SecondsPath(p)
                }
                ["TimestampPath"] => {
                    let p: String = field(name, obj, "TimestampPath")?.expect("present");
                    check_path(name, "TimestampPath", &p)?;
                    WaitFor::TimestampPath(p)
                }
                _ => {
                    return Err(refuse(
                        name,
                        "a Wait takes exactly one of Seconds, Timestamp, SecondsPath, TimestampPath",
                    ));
                }
            };
            State::Wait(Wait {
                io: io(name, obj)?,
                wait,
                then: transition(name, obj)?,
            })
        }
        "Succeed" => State::Succeed(Succeed { io: io(name, obj)? }),
        "Fail" => {
            let f = Fail {
                error: field(name, obj, "Error")?,
                cause: field(name, obj, "Cause")?,
                error_path: field(name, obj, "ErrorPath")?,
                cause_path: field(name, obj, "CausePath")?,
            };
            if f.error.is_some() && f.error_path.is_some()
                || f.cause.is_some() && f.cause_path.is_some()
            {
                return Err(refuse(
                    name,
                    "Error/Cause and their Path forms exclude each other",
                ));
            }
            State::Fail(f)
        }
        "Parallel" => {
            let list: Vec<Value> = field(name, obj, "Branches")?.unwrap_or_default();
            if list.is_empty() {
                return Err(refuse(name, "a Parallel needs at least one branch"));
            }
            let branches = list
                .iter()
                .map(|b| machine(b, false).map_err(|e| refuse(name, format!("in a branch: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let (retry, catch) = retries(name, obj)?;
            State::Parallel(Box::new(Parallel {
                io: io(name, obj)?,
                result: result_io(name, obj)?,
                branches,
                retry,
                catch,
                then: transition(name, obj)?,
            }))
        }
        "Map" => {
            let processor = match (obj.get("ItemProcessor"), obj.get("Iterator")) {
                (Some(p), None) | (None, Some(p)) => p,
                _ => {
                    return Err(refuse(name, "a Map needs one of ItemProcessor or Iterator"));
                }
            };
            let processor = machine(processor, false)
                .map_err(|e| refuse(name, format!("in its processor: {e}")))?;
            let item_selector = match (
                template(name, obj, "ItemSelector")?,
                template(name, obj, "Parameters")?,
            ) {
                (Some(_), Some(_)) => {
                    return Err(refuse(
                        name,
                        "ItemSelector and Parameters exclude each other",
                    ));
                }
                (a, b) => a.or(b),
            };
            let (retry, catch) = retries(name, obj)?;
            State::Map(Box::new(Map {
                io: io(name, obj)?,
                result: ResultIo {
                    parameters: None,
                    result_selector: template(name, obj, "ResultSelector")?,
                    result_path: path_field(name, obj, "ResultPath")?,
                },
                items_path: path_field(name, obj, "ItemsPath")?,
                item_selector,
                processor,
                max_concurrency: field(name, obj, "MaxConcurrency")?.unwrap_or(0),
                retry,
                catch,
                then: transition(name, obj)?,
            }))
        }
        _ => unreachable!("allowed() knows the types"),
    })
}

/// `QueryLanguage` (of a machine or a state) may only say JSONPath.
fn query_language(obj: &serde_json::Map<String, Value>) -> Result<(), String> {
    match obj.get("QueryLanguage") {
        None => Ok(()),
        Some(Value::String(l)) if l == "JSONPath" => Ok(()),
        Some(Value::String(l)) if l == "JSONata" => {
            Err("QueryLanguage JSONata is not supported; Nimbus runs JSONPath definitions".into())
        }
        Some(other) => Err(format!("QueryLanguage must be \"JSONPath\", not {other}")),
    }
}

/// Parses a machine (`top`: the whole state machine, which may have
/// `TimeoutSeconds`, `Version` and `Comment`; branches and processors may have
/// `ProcessorConfig` for Map).
fn machine(v: &Value, top: bool) -> Result<Machine, DefinitionError> {
    let Value::Object(obj) = v else {
        return Err(DefinitionError(
            "a state machine must be a JSON object".into(),
        ));
    };
    let known: &[&str] = if top {
        &[
            "StartAt",
            "States",
            "Comment",
            "TimeoutSeconds",
            "Version",
            "QueryLanguage",
        ]
    } else {
        &["StartAt", "States", "Comment", "ProcessorConfig"]
    };
    if let Some(bad) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(DefinitionError(format!("unknown field '{bad}'")));
    }
    query_language(obj).map_err(DefinitionError)?;
    if let Some(cfg) = obj.get("ProcessorConfig")
        && cfg
            .get("Mode")
            .and_then(Value::as_str)
            .is_some_and(|m| m != "INLINE")
    {
        return Err(DefinitionError(
            "only the INLINE Map mode is supported (ProcessorConfig.Mode)".into(),
        ));
    }
    let start_at = match obj.get("StartAt") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(DefinitionError("StartAt must name a state".into())),
    };
    let Some(Value::Object(raw)) = obj.get("States") else {
        return Err(DefinitionError("States must be an object of states".into()));
    };
    let mut states = BTreeMap::new();
    for (name, v) in raw {
        states.insert(name.clone(), state(name, v)?);
    }
    let timeout_seconds =
        match obj.get("TimeoutSeconds") {
            None => None,
            Some(v) => Some(v.as_u64().filter(|s| *s > 0).ok_or_else(|| {
                DefinitionError("TimeoutSeconds must be a positive integer".into())
            })?),
        };
    let m = Machine {
        start_at,
        states,
        timeout_seconds,
    };
    m.check_graph()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::asl::Machine;

    fn refused(def: serde_json::Value) -> String {
        Machine::parse(&def).unwrap_err().to_string()
    }

    #[test]
    fn definitions_are_checked_whole_and_errors_name_the_state() {
        let ok = Machine::parse(&json!({
            "Comment": "all the types",
            "StartAt": "T",
            "TimeoutSeconds": 60,
            "States": {
                "T": {"Type": "Task", "Resource": "f:live", "Retry": [{"ErrorEquals": ["States.ALL"]}],
                      "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "F", "ResultPath": "$.error"}],
                      "Next": "C"},
                "C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "NumericEquals": 1, "Next": "W"}],
                      "Default": "P"},
                "W": {"Type": "Wait", "SecondsPath": "$.s", "Next": "P"},
                "P": {"Type": "Parallel", "Branches": [
                        {"StartAt": "B1", "States": {"B1": {"Type": "Pass", "End": true}}},
                        {"StartAt": "B2", "States": {"B2": {"Type": "Succeed"}}}], "Next": "M"},
                "M": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2,
                      "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "I",
                                        "States": {"I": {"Type": "Pass", "End": true}}},
                      "Next": "S"},
                "S": {"Type": "Succeed"},
                "F": {"Type": "Fail", "Error": "E", "Cause": "c"}
            }
        }))
        .unwrap();
        assert_eq!(ok.resources(), vec!["f:live"]);
        let base = |states: serde_json::Value| json!({"StartAt": "A", "States": states});
        assert!(
            refused(base(
                json!({"A": {"Type": "Pass", "End": true, "Bogus": 1}})
            ))
            .contains("state 'A'")
        );
        assert!(refused(base(json!({"A": {"Type": "Pass"}}))).contains("state 'A': needs Next"));
        assert!(
            refused(base(json!({"A": {"Type": "Pass", "Next": "Z"}})))
                .contains("'Z', which is not a state")
        );
        assert!(
            refused(base(json!({"A": {"Type": "Pass", "End": true},
                                    "B": {"Type": "Succeed"}})))
            .contains("state 'B': cannot be reached")
        );
        assert!(
            refused(base(json!({"A": {"Type": "Warp", "End": true}}))).contains("unknown Type")
        );
        assert!(
            refused(base(
                json!({"A": {"Type": "Pass", "InputPath": "$[", "End": true}})
            ))
            .contains("not a JSONPath")
        );
        assert!(
            refused(base(
                json!({"A": {"Type": "Pass", "Parameters": {"x.$": "States.Nope(1)"}, "End": true}})
            ))
            .contains("state 'A'")
        );
        assert!(
            refused(base(json!({"A": {"Type": "Choice", "Choices": [
            {"Variable": "$.x", "NumericEquals": "one", "Next": "A"}]}})))
            .contains("takes a number")
        );
        assert!(
            refused(base(json!({"A": {"Type": "Choice", "Choices": [
            {"Variable": "$.x", "Bogus": 1, "Next": "A"}]}})))
            .contains("unknown Choice operator")
        );
        assert!(refused(base(json!({"A": {"Type": "Wait", "Seconds": 1, "Timestamp": "2026-01-01T00:00:00Z", "End": true}}))).contains("exactly one"));
        assert!(
            refused(base(
                json!({"A": {"Type": "Task", "Resource": "f", "End": true,
            "Retry": [{"ErrorEquals": ["States.ALL", "E"]}]}})
            ))
            .contains("alone")
        );
        assert!(refused(json!({"StartAt": "A", "States": {"A": {"Type": "Parallel", "End": true, "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}]}}})).contains("used twice"));
        assert!(
            refused(json!({"StartAt": "A", "States": {}, "Extra": 1})).contains("unknown field")
        );
        assert!(
            refused(json!({"StartAt": "Nope", "States": {"A": {"Type": "Succeed"}}}))
                .contains("StartAt")
        );
        assert!(refused(base(json!({"A": {"Type": "Map", "End": true, "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED"}, "StartAt": "I", "States": {"I": {"Type": "Succeed"}}}}}))).contains("INLINE"));
    }
}
