//! Pull request previews: plan without apply. The PR head goes through the
//! same gate and the same target plans as a branch head (the DAGs target
//! staging in a scratch directory, never the volume Airflow reads), and
//! the plans are rendered for the commit status and the PR comment, then
//! thrown away. The agent runs previews on the source's own worker,
//! between syncs, so a preview never races a fetch on the same mirror.

use std::sync::atomic::AtomicBool;

use crate::config::{Config, SourceConfig};
use crate::dags::PythonChecker;
use crate::desired;
use crate::problem::Problem;
use crate::report::comment::{self, TargetPreview};
use crate::report::ledger::State;
use crate::revision::{Origin, Revision};
use crate::source::GitSource;
use crate::status::RevisionRecord;
use crate::targets::{self, Plan, Purpose};
use crate::verdict::{Failure, Retry};

/// What a preview concluded, ready for the reporter and the status API.
pub struct Preview {
    pub pr: u64,
    pub sha: String,
    /// `ferry/plan` (platform) or `ferry/dags`.
    pub context: &'static str,
    pub state: State,
    pub description: String,
    pub comment: String,
    pub detail: serde_json::Value,
    pub took: std::time::Duration,
}

impl Preview {
    /// Its entry in the source's revision history.
    pub fn record(&self) -> RevisionRecord {
        let mut record = RevisionRecord::new(
            self.sha.clone(),
            Origin::PullRequest(self.pr).as_str(),
            Some(self.pr),
            self.state.as_str(),
            self.description.clone(),
            Some(self.detail.clone()),
        );
        record.duration_ms = Some(self.took.as_millis() as u64);
        record
    }
}

/// Fetches `refs/pull/<pr>/head` into the mirror and previews it against
/// every target `source_config` feeds.
pub async fn run(
    source: &GitSource,
    config: &Config,
    source_config: &SourceConfig,
    pr: u64,
    cancel: &AtomicBool,
) -> Preview {
    let scratch = config
        .cache_dir
        .join(format!("preview-{}-{pr}", source.name));
    let _ = std::fs::remove_dir_all(&scratch);
    let started = std::time::Instant::now();
    let mut preview = preview(source, config, source_config, pr, &scratch, cancel).await;
    preview.took = started.elapsed();
    let _ = std::fs::remove_dir_all(&scratch);
    preview
}

async fn preview(
    source: &GitSource,
    config: &Config,
    source_config: &SourceConfig,
    pr: u64,
    scratch: &std::path::Path,
    cancel: &AtomicBool,
) -> Preview {
    let platform = config
        .targets
        .dags
        .as_ref()
        .is_none_or(|d| d.source != source.name);
    let context = if platform { "ferry/plan" } else { "ferry/dags" };
    let fail = |sha: String, message: String| Preview {
        pr,
        sha,
        context,
        state: State::Error,
        description: message.clone(),
        comment: String::new(),
        detail: serde_json::json!({ "error": message }),
        took: Default::default(),
    };
    let mut targets = match targets::for_source(config, source_config, Some(scratch)) {
        Ok(t) => t,
        Err(e) => return fail(String::new(), format!("cannot prepare the preview: {e}")),
    };
    let fetched = tokio::task::block_in_place(|| {
        source.fetch_ref(
            &format!("refs/pull/{pr}/head"),
            &format!("refs/ferry/pull/{pr}"),
            cancel,
        )
    });
    let commit = match fetched {
        Ok(f) => f.commit,
        Err(err) => {
            return fail(
                String::new(),
                format!("cannot fetch the pull request head: {err}"),
            );
        }
    };
    let revision = Revision {
        source: source.name.clone(),
        commit,
        mirror: source.mirror_path().to_path_buf(),
        origin: Origin::PullRequest(pr),
        signed_by: None,
    };
    let mut feeds = targets::feeds(&targets);
    targets::render_context(&mut targets, &mut feeds, &revision).await;
    let desired = tokio::task::block_in_place(|| {
        desired::read(&revision, &feeds, &mut PythonChecker::default())
    });
    let planned = match desired {
        Err(rejection) => Err(rejection.problems),
        Ok(desired) => {
            let mut planned = Vec::new();
            for target in &mut targets {
                let plan = target.plan(&desired, Purpose::Review, cancel).await;
                planned.push((target.name(), plan));
            }
            Ok(planned)
        }
    };
    let preview = if platform {
        platform_preview(&source.name, pr, &revision, &planned)
    } else {
        dags_preview(&source.name, pr, &revision, &planned)
    };
    if let Ok(planned) = planned {
        for (target, (_, plan)) in targets.iter_mut().zip(planned) {
            if let Ok(plan) = plan {
                target.discard(plan);
            }
        }
    }
    preview
}

type Planned = Result<Vec<(&'static str, Result<Plan, Failure>)>, Vec<Problem>>;

fn dags_preview(name: &str, pr: u64, revision: &Revision, planned: &Planned) -> Preview {
    let sha = revision.sha();
    let (state, description, files, problems, hook, error) = match planned {
        Err(problems) => (
            State::Failure,
            format!(
                "{} problem(s), would not publish: {}",
                problems.len(),
                problems.first().map(|p| p.to_string()).unwrap_or_default()
            ),
            0,
            problems.clone(),
            None,
            None,
        ),
        Ok(plans) => match plans.first().map(|(_, p)| p) {
            Some(Ok(Plan::Dags(plan)))
                if plan.warnings.is_empty() && plan.hook.as_ref().is_none_or(|h| h.success) =>
            {
                (
                    State::Success,
                    format!("{} file(s) valid, would publish", plan.files()),
                    plan.files(),
                    Vec::new(),
                    plan.hook.clone(),
                    None,
                )
            }
            Some(Ok(Plan::Dags(plan))) => (
                State::Success,
                format!(
                    "would publish with {} warning(s) (policy: warn)",
                    plan.warnings.len()
                ),
                plan.files(),
                plan.warnings.clone(),
                plan.hook.clone(),
                None,
            ),
            Some(Err(failure)) if failure.policy().retry == Retry::WaitForGit => (
                State::Failure,
                format!(
                    "{} problem(s), would not publish: {}",
                    failure.problems.len().max(1),
                    failure
                        .problems
                        .first()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "the validation command failed".into())
                ),
                0,
                failure.problems.clone(),
                failure.hook.as_deref().cloned(),
                None,
            ),
            Some(Err(failure)) => (
                State::Error,
                failure.message.clone(),
                0,
                Vec::new(),
                None,
                Some(failure.message.clone()),
            ),
            _ => (
                State::Error,
                "no DAGs target to preview".to_string(),
                0,
                Vec::new(),
                None,
                None,
            ),
        },
    };
    Preview {
        pr,
        sha: sha.clone(),
        context: "ferry/dags",
        state,
        description,
        comment: comment::dags_comment(
            name,
            pr,
            &sha,
            files,
            &problems,
            hook.as_ref(),
            error.as_deref(),
        ),
        detail: serde_json::json!({ "problems": problems, "hook": hook, "error": error }),
        took: Default::default(),
    }
}

fn platform_preview(name: &str, pr: u64, revision: &Revision, planned: &Planned) -> Preview {
    let sha = revision.sha();
    let how_to =
        format!("Full plan: `ferry plan --config ferry.yaml --revision refs/pull/{pr}/head`.");
    let mut previews = Vec::new();
    let mut detail = serde_json::Map::new();
    let mut unavailable = false;
    let mut first = None;
    match planned {
        Err(problems) => {
            let errors: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            first = errors.first().cloned();
            detail.insert("problems".into(), serde_json::json!(problems));
            previews.push(TargetPreview {
                cautions: Vec::new(),
                target: "commit".into(),
                create: 0,
                update: 0,
                delete: 0,
                unchanged: 0,
                failed: errors.len(),
                errors,
                sections: Vec::new(),
            });
        }
        Ok(plans) => {
            for (target, plan) in plans {
                match plan {
                    Ok(plan) => {
                        let Some(preview) = plan.preview() else {
                            continue;
                        };
                        if first.is_none() {
                            first = plan.first_problem();
                        }
                        detail.insert(preview.target.clone(), plan.to_json());
                        previews.push(preview);
                    }
                    Err(failure) => {
                        unavailable |= failure.policy().retry == Retry::Backoff;
                        let message = failure.message.clone();
                        first.get_or_insert(message.clone());
                        detail.insert("error".into(), serde_json::json!(message));
                        previews.push(TargetPreview {
                            cautions: Vec::new(),
                            target: target.to_string(),
                            create: 0,
                            update: 0,
                            delete: 0,
                            unchanged: 0,
                            failed: 1,
                            errors: vec![message],
                            sections: Vec::new(),
                        });
                    }
                }
            }
        }
    }
    let failed: usize = previews.iter().map(|p| p.failed).sum();
    let (state, description) = if unavailable {
        (State::Error, first.unwrap_or_default())
    } else if failed > 0 {
        (
            State::Failure,
            format!("{failed} problem(s): {}", first.unwrap_or_default()),
        )
    } else {
        let sum = |f: fn(&TargetPreview) -> usize| previews.iter().map(f).sum::<usize>();
        (
            State::Success,
            format!(
                "plan: {} to create, {} to update, {} to delete",
                sum(|p| p.create),
                sum(|p| p.update),
                sum(|p| p.delete)
            ),
        )
    };
    Preview {
        pr,
        sha: sha.clone(),
        context: "ferry/plan",
        state,
        description,
        comment: comment::platform_comment(name, pr, &sha, &previews, &how_to),
        detail: serde_json::Value::Object(detail),
        took: Default::default(),
    }
}
