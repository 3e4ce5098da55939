//! What one state did, as the engine commits it.

use serde_json::Value;

use crate::paths::PathError;

/// A step's error, named as ASL names errors.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) error: String,
    pub(crate) cause: String,
}

impl From<PathError> for Failure {
    fn from(e: PathError) -> Self {
        Failure {
            error: e.error.to_string(),
            cause: e.cause,
        }
    }
}

/// What one state did.
pub(crate) enum Step {
    /// Go to the state with this input.
    Next(String, Value),
    /// The run ends with this output.
    End(Value),
    /// Go to the state with this input, not before `due_at`.
    Later(String, Value, i64),
    /// Stay at this (final) Wait until then, then end.
    WaitThenEnd(i64),
    /// The state failed.
    Fail(Failure),
    /// Retry the state after `delay_ms` (attempts of `retrier` counted).
    Retry(usize, u64, Failure),
    /// Start these children and wait for them: (scope, input) each, with at most
    /// `limit` running (0: all).
    Spawn(Vec<(String, Value)>, u32),
    /// Could not run now (no concurrency slot): try again soon, uncounted.
    Defer,
}
