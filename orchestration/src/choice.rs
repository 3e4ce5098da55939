//! Evaluating `Choice` rules, and matching errors against `Retry` and `Catch`.

use serde_json::Value;

use crate::asl::{Catcher, Retrier, Rule, Test};
use crate::paths::{PathError, select};

/// The first rule that holds, as the state it goes to; else `Default`.
pub fn choose<'a>(
    rules: &'a [Rule],
    default: Option<&'a str>,
    input: &Value,
    context: &Value,
) -> Result<&'a str, PathError> {
    for r in rules {
        if holds(r, input, context)? {
            return Ok(r.next.as_deref().expect("top-level rules have Next"));
        }
    }
    default.ok_or_else(|| PathError {
        error: "States.NoChoiceMatched",
        cause: "no Choice rule matched and there is no Default".into(),
    })
}

fn holds(r: &Rule, input: &Value, context: &Value) -> Result<bool, PathError> {
    Ok(match &r.test {
        Test::And(rs) => {
            for r in rs {
                if !holds(r, input, context)? {
                    return Ok(false);
                }
            }
            true
        }
        Test::Or(rs) => {
            for r in rs {
                if holds(r, input, context)? {
                    return Ok(true);
                }
            }
            false
        }
        Test::Not(r) => !holds(r, input, context)?,
        Test::Compare {
            variable,
            operator,
            operand,
        } => {
            // IsPresent asks whether the variable exists at all.
            let value = match select(variable, input, context) {
                Ok(v) => Some(v),
                Err(_) if operator == "IsPresent" => None,
                Err(e) => return Err(e),
            };
            let Some(value) = value else {
                return Ok(operand == &Value::Bool(false));
            };
            let operand = match operator.strip_suffix("Path") {
                Some(_) => select(operand.as_str().unwrap_or("$"), input, context)?,
                None => operand.clone(),
            };
            compare(operator.trim_end_matches("Path"), &value, &operand)
        }
    })
}

fn timestamp(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
}

fn compare(op: &str, v: &Value, o: &Value) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let is = |want: bool| o.as_bool() == Some(want);
    let order = |ord: Option<std::cmp::Ordering>, accept: &[std::cmp::Ordering]| {
        ord.is_some_and(|x| accept.contains(&x))
    };
    let (kind, rel) = match op {
        "IsNull" => return is(v.is_null()),
        "IsPresent" => return is(true),
        "IsNumeric" => return is(v.is_number()),
        "IsString" => return is(v.is_string()),
        "IsBoolean" => return is(v.is_boolean()),
        "IsTimestamp" => return is(timestamp(v).is_some()),
        "StringMatches" => {
            return matches!((v.as_str(), o.as_str()), (Some(s), Some(p)) if glob(s, p));
        }
        "BooleanEquals" => return v.is_boolean() && v == o,
        _ => {
            let kind = ["String", "Numeric", "Timestamp"]
                .into_iter()
                .find(|k| op.starts_with(k))
                .unwrap_or("");
            (kind, &op[kind.len()..])
        }
    };
    let ord = match kind {
        "String" => match (v.as_str(), o.as_str()) {
            (Some(a), Some(b)) => Some(a.cmp(b)),
            _ => None,
        },
        "Numeric" => match (v.as_f64(), o.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => None,
        },
        "Timestamp" => match (timestamp(v), timestamp(o)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => None,
        },
        _ => None,
    };
    match rel {
        "Equals" => order(ord, &[Equal]),
        "LessThan" => order(ord, &[Less]),
        "GreaterThan" => order(ord, &[Greater]),
        "LessThanEquals" => order(ord, &[Less, Equal]),
        "GreaterThanEquals" => order(ord, &[Greater, Equal]),
        _ => false,
    }
}

/// `StringMatches`: `*` matches any run of characters; `\*` and `\\` are literal.
fn glob(s: &str, pattern: &str) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Star,
        Char(char),
    }
    let mut toks = vec![];
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => toks.push(Tok::Char(it.next().unwrap_or('\\'))),
            '*' => toks.push(Tok::Star),
            c => toks.push(Tok::Char(c)),
        }
    }
    let chars: Vec<char> = s.chars().collect();
    // Classic wildcard matching with backtracking to the last star.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while i < chars.len() {
        match toks.get(j) {
            Some(Tok::Char(c)) if *c == chars[i] => {
                i += 1;
                j += 1;
            }
            Some(Tok::Star) => {
                star = Some(j);
                mark = i;
                j += 1;
            }
            _ => match star {
                Some(sj) => {
                    j = sj + 1;
                    mark += 1;
                    i = mark;
                }
                None => return false,
            },
        }
    }
    toks[j..].iter().all(|t| *t == Tok::Star)
}

/// Whether `error` is named by an `ErrorEquals` list: by its name, by `States.ALL`
/// (any error), or by `States.TaskFailed` (any error but a timeout). A heartbeat
/// timeout (`States.HeartbeatTimeout`) is also matched by `States.Timeout`. As in
/// Step Functions, `States.Runtime` (a broken path, a bad input to the machine
/// itself) is neither retried nor caught: it fails the execution.
pub fn matches(list: &[String], error: &str) -> bool {
    if error == "States.Runtime" {
        return false;
    }
    let timeout = matches!(error, "States.Timeout" | "States.HeartbeatTimeout");
    list.iter().any(|e| {
        e == error
            || e == "States.ALL"
            || (e == "States.TaskFailed" && !timeout)
            || (e == "States.Timeout" && timeout)
    })
}

/// The retrier that applies to `error`, if any (the first that names it).
pub fn retrier<'a>(retry: &'a [Retrier], error: &str) -> Option<(usize, &'a Retrier)> {
    retry
        .iter()
        .enumerate()
        .find(|(_, r)| matches(&r.error_equals, error))
}

/// The catcher that applies to `error`, if any.
pub fn catcher<'a>(catch: &'a [Catcher], error: &str) -> Option<&'a Catcher> {
    catch.iter().find(|c| matches(&c.error_equals, error))
}

/// The wait before retry `attempt` (1-based) of a retrier, ms: interval × rate^(n-1),
/// capped by `MaxDelaySeconds`, with full jitter if asked (`unit` in 0..1).
pub fn backoff_ms(r: &Retrier, attempt: u32, unit: f64) -> u64 {
    let mut s = r.interval_seconds * r.backoff_rate.powi(attempt.saturating_sub(1) as i32);
    if let Some(max) = r.max_delay_seconds {
        s = s.min(max);
    }
    if r.jitter_strategy == Some(crate::asl::Jitter::Full) {
        s *= unit;
    }
    (s * 1000.0).clamp(0.0, 3.6e9) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asl::Machine;
    use serde_json::json;

    fn machine_with(choices: Value) -> Machine {
        Machine::parse(&json!({
            "StartAt": "C",
            "States": {
                "C": {"Type": "Choice", "Choices": choices, "Default": "D"},
                "A": {"Type": "Succeed"}, "B": {"Type": "Succeed"}, "D": {"Type": "Succeed"}
            }
        }))
        .unwrap()
    }

    fn pick(m: &Machine, input: Value) -> String {
        let crate::asl::State::Choice(c) = &m.states["C"] else {
            unreachable!()
        };
        choose(&c.choices, c.default.as_deref(), &input, &json!({}))
            .unwrap()
            .to_string()
    }

    /// The specification's Choice example, and every family of operator.
    #[test]
    fn choice_rules() {
        let m = machine_with(json!([
            {"Not": {"Variable": "$.type", "StringEquals": "Private"}, "Next": "A"},
            {"And": [
                {"Variable": "$.value", "IsPresent": true},
                {"Variable": "$.value", "IsNumeric": true},
                {"Variable": "$.value", "NumericGreaterThanEquals": 20},
                {"Variable": "$.value", "NumericLessThan": 30}
            ], "Next": "B"}
        ]));
        assert_eq!(pick(&m, json!({"type": "Public"})), "A");
        assert_eq!(pick(&m, json!({"type": "Private", "value": 25})), "B");
        assert_eq!(pick(&m, json!({"type": "Private", "value": 35})), "D");
        assert_eq!(pick(&m, json!({"type": "Private"})), "D");
        let m = machine_with(json!([
            {"Variable": "$.when", "TimestampLessThan": "2026-01-01T00:00:00Z", "Next": "A"},
            {"Or": [
                {"Variable": "$.name", "StringMatches": "log-*.txt"},
                {"Variable": "$.a", "NumericEqualsPath": "$.b"},
                {"Variable": "$.flag", "BooleanEquals": true}
            ], "Next": "B"}
        ]));
        assert_eq!(pick(&m, json!({"when": "2025-06-01T00:00:00Z"})), "A");
        assert_eq!(
            pick(
                &m,
                json!({"when": "2027-06-01T00:00:00Z", "name": "log-1.txt"})
            ),
            "B"
        );
        assert_eq!(
            pick(
                &m,
                json!({"when": "2027-06-01T00:00:00Z", "name": "x", "a": 2, "b": 2})
            ),
            "B"
        );
        assert_eq!(
            pick(
                &m,
                json!({"when": "2027-06-01T00:00:00Z", "name": "x", "a": 1, "b": 2, "flag": false})
            ),
            "D"
        );
        // No match and no Default: States.NoChoiceMatched.
        let m = Machine::parse(&json!({
            "StartAt": "C",
            "States": {"C": {"Type": "Choice", "Choices": [
                {"Variable": "$.x", "IsNull": true, "Next": "A"}]}, "A": {"Type": "Succeed"}}
        }))
        .unwrap();
        let crate::asl::State::Choice(c) = &m.states["C"] else {
            unreachable!()
        };
        let e = choose(&c.choices, None, &json!({"x": 1}), &json!({})).unwrap_err();
        assert_eq!(e.error, "States.NoChoiceMatched");
    }

    #[test]
    fn globs() {
        assert!(glob("log-1.txt", "log-*.txt"));
        assert!(glob("anything", "*"));
        assert!(glob("a*b", "a\\*b"));
        assert!(!glob("axb", "a\\*b"));
        assert!(!glob("log-1.txt.gz", "log-*.txt"));
        assert!(glob("abcabc", "*abc"));
    }

    #[test]
    fn errors_match_retriers_and_catchers() {
        let all = vec!["States.ALL".to_string()];
        let task = vec!["States.TaskFailed".to_string()];
        assert!(matches(&all, "MyError"));
        assert!(matches(&task, "MyError"));
        assert!(!matches(&task, "States.Timeout"));
        assert!(matches(&["States.Timeout".to_string()], "States.Timeout"));
        assert!(matches(
            &["States.Timeout".to_string()],
            "States.HeartbeatTimeout"
        ));
        assert!(matches(
            &["States.HeartbeatTimeout".to_string()],
            "States.HeartbeatTimeout"
        ));
        assert!(!matches(
            &["States.HeartbeatTimeout".to_string()],
            "States.Timeout"
        ));
        assert!(!matches(&task, "States.HeartbeatTimeout"));
        assert!(!matches(&["Other".to_string()], "MyError"));
        assert!(!matches(&all, "States.Runtime"));
        let r: Retrier = serde_json::from_value(json!({
            "ErrorEquals": ["E"], "IntervalSeconds": 2, "BackoffRate": 3, "MaxDelaySeconds": 10
        }))
        .unwrap();
        assert_eq!(r.max_attempts, 3);
        assert_eq!(backoff_ms(&r, 1, 1.0), 2_000);
        assert_eq!(backoff_ms(&r, 2, 1.0), 6_000);
        assert_eq!(backoff_ms(&r, 3, 1.0), 10_000);
    }
}
