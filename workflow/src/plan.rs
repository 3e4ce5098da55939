//! Task kinds as data: each is an ordered list of steps, each step with an optional
//! compensation. A new feature is a new list, not a new service.

use nimbus_core::step::Action;
use serde::{Deserialize, Serialize};

/// One step of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSpec {
    /// The service that runs it: `code`, `resource`, `network`, or `workflow` (the
    /// engine itself, inline, for the final metadata commit).
    pub service: &'static str,
    /// The action.
    pub action: Action,
    /// The action that undoes it, if it has an effect to undo.
    pub compensation: Option<Action>,
}

const fn step(service: &'static str, action: Action, compensation: Option<Action>) -> StepSpec {
    StepSpec {
        service,
        action,
        compensation,
    }
}

/// The engine's own service name, for inline steps.
pub const WORKFLOW: &str = "workflow";

/// The kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Store the code, attach the tenant network, reserve capacity, activate.
    CreateFunction,
    /// Store new code for `$LATEST`.
    UpdateCode,
    /// Change configuration (and provisioned capacity).
    UpdateConfig,
    /// Snapshot `$LATEST` as the next version.
    PublishVersion,
    /// Release capacity, network and code, then remove the function.
    DeleteFunction,
}

impl TaskKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::CreateFunction => "create_function",
            TaskKind::UpdateCode => "update_code",
            TaskKind::UpdateConfig => "update_config",
            TaskKind::PublishVersion => "publish_version",
            TaskKind::DeleteFunction => "delete_function",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskKind::CreateFunction,
            TaskKind::UpdateCode,
            TaskKind::UpdateConfig,
            TaskKind::PublishVersion,
            TaskKind::DeleteFunction,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The task's steps, in order. The last is always the engine's `activate`.
    pub fn steps(self) -> &'static [StepSpec] {
        match self {
            TaskKind::CreateFunction => CREATE,
            TaskKind::UpdateCode => UPDATE_CODE,
            TaskKind::UpdateConfig => UPDATE_CONFIG,
            TaskKind::PublishVersion => PUBLISH,
            TaskKind::DeleteFunction => DELETE,
        }
    }
}

const ACTIVATE: StepSpec = step(WORKFLOW, Action::Activate, None);
const CREATE: &[StepSpec] = &[
    step("code", Action::Store, Some(Action::Discard)),
    step("network", Action::Ensure, Some(Action::Release)),
    step("resource", Action::Reserve, Some(Action::Release)),
    ACTIVATE,
];
const UPDATE_CODE: &[StepSpec] = &[step("code", Action::Store, Some(Action::Discard)), ACTIVATE];
const UPDATE_CONFIG: &[StepSpec] = &[
    step("resource", Action::Reserve, Some(Action::Restore)),
    ACTIVATE,
];
const PUBLISH: &[StepSpec] = &[step("code", Action::Verify, None), ACTIVATE];
const DELETE: &[StepSpec] = &[
    step("resource", Action::Release, None),
    step("network", Action::Release, None),
    step("code", Action::Release, None),
    ACTIVATE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_ends_with_activate_and_names_roundtrip() {
        for k in [
            TaskKind::CreateFunction,
            TaskKind::UpdateCode,
            TaskKind::UpdateConfig,
            TaskKind::PublishVersion,
            TaskKind::DeleteFunction,
        ] {
            let last = k.steps().last().unwrap();
            assert_eq!((last.service, last.action), (WORKFLOW, Action::Activate));
            assert_eq!(TaskKind::parse(k.as_str()), Some(k));
            assert!(
                k.steps()[..k.steps().len() - 1]
                    .iter()
                    .all(|s| s.service != WORKFLOW)
            );
        }
    }
}
