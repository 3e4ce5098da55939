//! Amazon States Language definitions as types, and the checks on the whole graph
//! (every `Next` names a state, every state is reachable, names are unique). Reading
//! a definition into these types, field by field, is [`crate::parse`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Why a definition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DefinitionError(pub String);

pub(crate) fn refuse(state: &str, why: impl std::fmt::Display) -> DefinitionError {
    DefinitionError(format!("state '{state}': {why}"))
}

/// A path field that may be absent (the default applies), `null`, or a path.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub enum PathField {
    /// Not given: `$`.
    #[default]
    Absent,
    /// `null`: nothing (an empty object in, the input kept out).
    Null,
    /// A JSONPath.
    Path(String),
}

impl<'de> Deserialize<'de> for PathField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<String>::deserialize(d)? {
            None => PathField::Null,
            Some(p) => PathField::Path(p),
        })
    }
}

/// A state machine (or a branch, or a Map's processor).
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The first state.
    pub start_at: String,
    /// The states by name.
    pub states: BTreeMap<String, State>,
    /// The whole execution's timeout (top level only).
    pub timeout_seconds: Option<u64>,
}

/// One state.
#[derive(Debug, Clone, Serialize)]
pub enum State {
    Task(Box<Task>),
    Pass(Pass),
    Choice(Choice),
    Wait(Wait),
    Succeed(Succeed),
    Fail(Fail),
    Parallel(Box<Parallel>),
    Map(Box<Map>),
}

/// Where a state goes after it succeeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Transition {
    /// The named state.
    Next(String),
    /// The machine (or branch) ends with this state's output.
    End,
}

/// Input and output processing shared by most states.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Io {
    pub input_path: PathField,
    pub output_path: PathField,
}

/// Result processing of the states that produce a result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResultIo {
    pub parameters: Option<Value>,
    pub result_selector: Option<Value>,
    pub result_path: PathField,
}

/// `Retry` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Retrier {
    pub error_equals: Vec<String>,
    #[serde(default = "one_f64")]
    pub interval_seconds: f64,
    #[serde(default = "three")]
    pub max_attempts: u32,
    #[serde(default = "two_f64")]
    pub backoff_rate: f64,
    #[serde(default)]
    pub max_delay_seconds: Option<f64>,
    #[serde(default)]
    pub jitter_strategy: Option<Jitter>,
    #[serde(default)]
    pub comment: Option<String>,
}

fn one_f64() -> f64 {
    1.0
}
fn two_f64() -> f64 {
    2.0
}
fn three() -> u32 {
    3
}

/// `JitterStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Jitter {
    Full,
    None,
}

/// `Catch` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Catcher {
    pub error_equals: Vec<String>,
    pub next: String,
    #[serde(default)]
    pub result_path: PathField,
    #[serde(default)]
    pub comment: Option<String>,
}

/// `Task`: calls a function.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    /// The function: `name`, `name:qualifier`, its ARN, or
    /// `arn:aws:states:::lambda:invoke` (the function in `Parameters.FunctionName`,
    /// the result wrapped as `{"Payload", "StatusCode"}`, as Step Functions does).
    pub resource: String,
    pub io: Io,
    pub result: ResultIo,
    pub timeout_seconds: Option<u64>,
    pub timeout_seconds_path: Option<String>,
    pub heartbeat_seconds: Option<u64>,
    pub heartbeat_seconds_path: Option<String>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
    pub then: Transition,
}

/// `Pass`.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    pub io: Io,
    pub result_value: Option<Value>,
    pub parameters: Option<Value>,
    pub result_path: PathField,
    pub then: Transition,
}

/// `Choice`.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub io: Io,
    pub choices: Vec<Rule>,
    pub default: Option<String>,
}

/// A Choice rule: a comparison, or `And`/`Or`/`Not` of rules; top-level rules have
/// `Next`.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub test: Test,
    pub next: Option<String>,
}

/// What a rule tests.
#[derive(Debug, Clone, Serialize)]
pub enum Test {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    /// `Variable` compared with `operator` against `operand` (a value, or a path
    /// when the operator ends in `Path`).
    Compare {
        variable: String,
        operator: String,
        operand: Value,
    },
}

/// Every comparison operator of ASL.
pub const OPERATORS: &[&str] = &[
    "StringEquals",
    "StringEqualsPath",
    "StringLessThan",
    "StringLessThanPath",
    "StringGreaterThan",
    "StringGreaterThanPath",
    "StringLessThanEquals",
    "StringLessThanEqualsPath",
    "StringGreaterThanEquals",
    "StringGreaterThanEqualsPath",
    "StringMatches",
    "NumericEquals",
    "NumericEqualsPath",
    "NumericLessThan",
    "NumericLessThanPath",
    "NumericGreaterThan",
    "NumericGreaterThanPath",
    "NumericLessThanEquals",
    "NumericLessThanEqualsPath",
    "NumericGreaterThanEquals",
    "NumericGreaterThanEqualsPath",
    "BooleanEquals",
    "BooleanEqualsPath",
    "TimestampEquals",
    "TimestampEqualsPath",
    "TimestampLessThan",
    "TimestampLessThanPath",
    "TimestampGreaterThan",
    "TimestampGreaterThanPath",
    "TimestampLessThanEquals",
    "TimestampLessThanEqualsPath",
    "TimestampGreaterThanEquals",
    "TimestampGreaterThanEqualsPath",
    "IsNull",
    "IsPresent",
    "IsNumeric",
    "IsString",
    "IsBoolean",
    "IsTimestamp",
];

/// `Wait`: how long.
#[derive(Debug, Clone, Serialize)]
pub enum WaitFor {
    Seconds(u64),
    Timestamp(String),
    SecondsPath(String),
    TimestampPath(String),
}

/// `Wait`.
#[derive(Debug, Clone, Serialize)]
pub struct Wait {
    pub io: Io,
    pub wait: WaitFor,
    pub then: Transition,
}

/// `Succeed`.
#[derive(Debug, Clone, Serialize)]
pub struct Succeed {
    pub io: Io,
}

/// `Fail`.
#[derive(Debug, Clone, Serialize)]
pub struct Fail {
    pub error: Option<String>,
    pub cause: Option<String>,
    pub error_path: Option<String>,
    pub cause_path: Option<String>,
}

/// `Parallel`.
#[derive(Debug, Clone, Serialize)]
pub struct Parallel {
    pub io: Io,
    pub result: ResultIo,
    pub branches: Vec<Machine>,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
    pub then: Transition,
}

/// `Map` (inline).
#[derive(Debug, Clone, Serialize)]
pub struct Map {
    pub io: Io,
    pub result: ResultIo,
    pub items_path: PathField,
    /// `ItemSelector` (or the older `Parameters`).
    pub item_selector: Option<Value>,
    /// `ItemProcessor` (or the older `Iterator`).
    pub processor: Machine,
    /// 0: no limit.
    pub max_concurrency: u32,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
    pub then: Transition,
}

impl Machine {
    /// State names are unique across the whole machine, branches included.
    pub(crate) fn unique_names(&self, seen: &mut BTreeSet<String>) -> Result<(), DefinitionError> {
        for (name, s) in &self.states {
            if !seen.insert(name.clone()) {
                return Err(refuse(name, "the name is used twice in this state machine"));
            }
            match s {
                State::Parallel(p) => {
                    for b in &p.branches {
                        b.unique_names(seen)?;
                    }
                }
                State::Map(m) => m.processor.unique_names(seen)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Every name a state may go to.
    fn targets(s: &State) -> Vec<&str> {
        fn then(t: &Transition) -> Vec<&str> {
            match t {
                Transition::Next(n) => vec![n.as_str()],
                Transition::End => vec![],
            }
        }
        fn catches(c: &[Catcher]) -> Vec<&str> {
            c.iter().map(|c| c.next.as_str()).collect()
        }
        match s {
            State::Task(t) => [then(&t.then), catches(&t.catch)].concat(),
            State::Parallel(p) => [then(&p.then), catches(&p.catch)].concat(),
            State::Map(m) => [then(&m.then), catches(&m.catch)].concat(),
            State::Pass(p) => then(&p.then),
            State::Wait(w) => then(&w.then),
            State::Choice(c) => c
                .choices
                .iter()
                .filter_map(|r| r.next.as_deref())
                .chain(c.default.as_deref())
                .collect(),
            State::Succeed(_) | State::Fail(_) => vec![],
        }
    }

    /// Every target exists, and every state is reachable from `StartAt`.
    pub(crate) fn check_graph(&self) -> Result<(), DefinitionError> {
        if !self.states.contains_key(&self.start_at) {
            return Err(DefinitionError(format!(
                "StartAt names '{}', which is not a state",
                self.start_at
            )));
        }
        for (name, s) in &self.states {
            if let Some(bad) = Self::targets(s)
                .into_iter()
                .find(|t| !self.states.contains_key(*t))
            {
                return Err(refuse(
                    name,
                    format!("goes to '{bad}', which is not a state"),
                ));
            }
        }
        let mut reached = BTreeSet::new();
        let mut queue = VecDeque::from([self.start_at.as_str()]);
        while let Some(n) = queue.pop_front() {
            if reached.insert(n) {
                queue.extend(Self::targets(&self.states[n]));
            }
        }
        if let Some(lost) = self.states.keys().find(|k| !reached.contains(k.as_str())) {
            return Err(refuse(lost, "cannot be reached from StartAt"));
        }
        Ok(())
    }

    /// Every function a Task may call (for the caller to check they exist).
    pub fn resources(&self) -> Vec<&str> {
        let mut out = vec![];
        for s in self.states.values() {
            match s {
                State::Task(t) => out.push(t.resource.as_str()),
                State::Parallel(p) => p.branches.iter().for_each(|b| out.extend(b.resources())),
                State::Map(m) => out.extend(m.processor.resources()),
                _ => {}
            }
        }
        out
    }
}
