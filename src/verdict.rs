//! Why an evaluation did not succeed, decided where the failure happens,
//! and the one policy that turns that reason into a GitHub state, a retry
//! and a metric label (kube-rs's `error_policy`, as one pure function).

use serde::Serialize;

use crate::dags::HookReport;
use crate::problem::Problem;
use crate::report::State;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The head is not signed by a key the source allows.
    Untrusted,
    /// The gate found problems in the commit's files (DAG checks,
    /// manifests, platform.yaml).
    Invalid,
    /// A target refused the commit while planning it against what is live:
    /// an object outside the allow-lists, a kind the cluster does not serve,
    /// a nodegroup missing in AWS, a failed validation command.
    Refused,
    /// Applying went ahead and a change failed or did not become healthy.
    ApplyFailed,
    /// The remote could not be fetched.
    FetchFailed,
    /// The signature policy could not be read (e.g. the allowed signers file).
    VerifyUnavailable,
    /// The cluster could not be reached or answered with an error.
    ClusterUnavailable,
    /// AWS could not be reached or answered with an error.
    AwsUnavailable,
    /// Writing the DAGs volume failed (disk full, permissions).
    PublishFailed,
    /// A bug in ferry: a task panicked.
    Internal,
}

/// What to do about a commit after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Evaluating it again gives the same answer: wait for a new commit.
    WaitForGit,
    /// The world may recover: try the same commit again, backing off.
    Backoff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The commit's final GitHub state.
    pub state: State,
    pub retry: Retry,
    /// `result` label of `ferry_syncs_total`, `last_error.kind` in the status API.
    pub label: &'static str,
}

/// Every reason, for documentation and for tests that the set is complete.
pub const ALL: [Reason; 10] = [
    Reason::Untrusted,
    Reason::Invalid,
    Reason::Refused,
    Reason::ApplyFailed,
    Reason::FetchFailed,
    Reason::VerifyUnavailable,
    Reason::ClusterUnavailable,
    Reason::AwsUnavailable,
    Reason::PublishFailed,
    Reason::Internal,
];

pub fn policy(reason: Reason) -> Policy {
    use Reason::*;
    let (state, retry, label) = match reason {
        Untrusted => (State::Failure, Retry::WaitForGit, "untrusted_commit"),
        Invalid => (State::Failure, Retry::WaitForGit, "validation_failed"),
        Refused => (State::Failure, Retry::WaitForGit, "invalid_revision"),
        // Some objects may have been written: retried, so a transient
        // refusal (a webhook down, a quota) heals without a push.
        ApplyFailed => (State::Failure, Retry::Backoff, "apply_failed"),
        FetchFailed => (State::Error, Retry::Backoff, "fetch_error"),
        VerifyUnavailable => (State::Error, Retry::Backoff, "verify_error"),
        ClusterUnavailable => (State::Error, Retry::Backoff, "cluster_error"),
        AwsUnavailable => (State::Error, Retry::Backoff, "aws_error"),
        PublishFailed => (State::Error, Retry::Backoff, "publish_error"),
        Internal => (State::Error, Retry::Backoff, "internal_error"),
    };
    Policy {
        state,
        retry,
        label,
    }
}

/// A failed evaluation: the reason, a message for people, and the file
/// problems behind it when the commit's content is at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    pub problems: Vec<Problem>,
    /// The validation command's report, when it is what failed.
    pub hook: Option<Box<HookReport>>,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
            problems: Vec::new(),
            hook: None,
        }
    }

    /// A commit whose files have `problems`, in the words of `what` (e.g.
    /// "not applied"): the message names the first and counts the rest.
    pub fn problems(reason: Reason, what: &str, problems: Vec<Problem>) -> Failure {
        let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
        let message = match problems.len() {
            0 | 1 => format!("{what}: {first}"),
            n => format!("{what}: {first} (and {} more)", n - 1),
        };
        Failure {
            reason,
            message,
            problems,
            hook: None,
        }
    }

    pub fn policy(&self) -> Policy {
        policy(self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label_and_only_content_waits_for_git() {
        let labels: std::collections::HashSet<_> = ALL.iter().map(|r| policy(*r).label).collect();
        assert_eq!(labels.len(), ALL.len());
        for reason in ALL {
            let p = policy(reason);
            let content = matches!(
                reason,
                Reason::Untrusted | Reason::Invalid | Reason::Refused
            );
            assert_eq!(p.retry == Retry::WaitForGit, content, "{reason:?}");
            // Only the commit's own fault is a failure on GitHub, except an
            // apply that went wrong, which is also the commit's to fix.
            assert_eq!(
                p.state == State::Failure,
                content || reason == Reason::ApplyFailed,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn the_readme_lists_every_label() {
        let readme = include_str!("../README.md");
        for reason in ALL {
            let label = policy(reason).label;
            assert!(
                readme.contains(&format!("`{label}`")),
                "README misses {label}"
            );
        }
    }

    #[test]
    fn a_failure_names_its_first_problem_and_counts_the_rest() {
        let p = |line| Problem::new("platform.yaml", Some(line), "bad".into());
        let f = Failure::problems(Reason::Invalid, "not applied", vec![p(3), p(9)]);
        assert_eq!(f.message, "not applied: platform.yaml:3: bad (and 1 more)");
        assert_eq!(f.policy().label, "validation_failed");
    }
}
