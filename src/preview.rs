//! Pull request previews: what merging a PR would do, computed from the PR
//! head without changing anything live. The platform repo gets a plan of
//! every target (server-side dry runs); the DAGs repo gets the validation a
//! publish would run. The agent runs previews on the source's own worker,
//! between syncs, so a preview never races a fetch on the same mirror.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use git2::Oid;

use crate::config::{DagsTargetConfig, KubernetesTargetConfig, ValidationPolicy};
use crate::dags::{Publisher, PythonChecker, snapshot, validate};
use crate::report::comment::{self, TargetPreview};
use crate::report::ledger::State;
use crate::source::GitSource;

/// Pull requests waiting for a preview: number -> head SHA announced by the
/// webhook. A newer push to the same PR replaces the older request.
#[derive(Clone, Default)]
pub struct PreviewQueue(Arc<Mutex<BTreeMap<u64, String>>>);

impl PreviewQueue {
    pub fn request(&self, pr: u64, head_sha: &str) {
        self.lock().insert(pr, head_sha.to_string());
    }

    pub fn take(&self) -> Vec<(u64, String)> {
        std::mem::take(&mut *self.lock()).into_iter().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

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
}

pub enum PreviewTarget<'a> {
    Dags(&'a DagsTargetConfig),
    /// The platform repo: every target it feeds is planned.
    Platform {
        kubernetes: Option<&'a KubernetesTargetConfig>,
        #[cfg(feature = "aws")]
        aws: Option<&'a crate::config::AwsTargetConfig>,
    },
}

/// Fetches `refs/pull/<pr>/head` into the mirror and previews it.
pub async fn run(
    source: &GitSource,
    target: PreviewTarget<'_>,
    pr: u64,
    cache_dir: &std::path::Path,
    cancel: &AtomicBool,
) -> Preview {
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
            let message = format!("cannot fetch the pull request head: {err}");
            let context = match target {
                PreviewTarget::Dags(_) => "ferry/dags",
                PreviewTarget::Platform { .. } => "ferry/plan",
            };
            return Preview {
                pr,
                sha: String::new(),
                context,
                state: State::Error,
                description: message.clone(),
                comment: String::new(),
                detail: serde_json::json!({ "error": message }),
            };
        }
    };
    match target {
        PreviewTarget::Dags(config) => {
            let mirror = source.mirror_path().to_path_buf();
            let scratch = cache_dir.join(format!("preview-{}-{pr}", source.name));
            tokio::task::block_in_place(|| {
                preview_dags(&source.name, &mirror, config, pr, commit, &scratch, cancel)
            })
        }
        PreviewTarget::Platform {
            kubernetes,
            #[cfg(feature = "aws")]
            aws,
        } => {
            let mut planned = Vec::new();
            if let Some(config) = kubernetes {
                planned.push(plan_kubernetes(source, config, commit).await);
            }
            #[cfg(feature = "aws")]
            if let Some(config) = aws {
                planned.push(plan_aws(source, config, commit).await);
            }
            platform_preview(&source.name, pr, commit, planned)
        }
    }
}

fn preview_dags(
    name: &str,
    mirror: &std::path::Path,
    config: &DagsTargetConfig,
    pr: u64,
    commit: Oid,
    scratch: &std::path::Path,
    cancel: &AtomicBool,
) -> Preview {
    let sha = commit.to_string();
    let fail = |message: String| Preview {
        pr,
        sha: sha.clone(),
        context: "ferry/dags",
        state: State::Error,
        description: message.clone(),
        comment: comment::dags_comment(name, pr, &sha, 0, &[], None, Some(&message)),
        detail: serde_json::json!({ "error": message }),
    };
    let repo = match git2::Repository::open_bare(mirror) {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot open the mirror: {}", e.message())),
    };
    let snapshot = match snapshot::read(&repo, commit, &config.subdir) {
        Ok(s) => s,
        // A bad tree (escaping symlink, ...) is the PR's fault: a failure.
        Err(e) => {
            let message = e.to_string();
            return Preview {
                state: State::Failure,
                ..fail(message)
            };
        }
    };
    let problems = PythonChecker::default().check(&repo, &snapshot, &config.subdir);
    let blocking = config.validation.policy == ValidationPolicy::Block;
    let hook = if config.validation.command.is_empty() || (blocking && !problems.is_empty()) {
        None
    } else {
        // The hook sees the files exactly as a publish would stage them.
        let _ = std::fs::remove_dir_all(scratch);
        let staged = Publisher::open(scratch, "current", config.retention.clone())
            .and_then(|p| p.stage(&repo, &snapshot, None).map(|s| (p, s)));
        let (publisher, staged) = match staged {
            Ok(x) => x,
            Err(e) => {
                return fail(format!(
                    "cannot stage the files for the validation command: {e}"
                ));
            }
        };
        let report = validate::run_hook(
            &config.validation.command,
            staged.path(),
            commit,
            config.validation.timeout,
            cancel,
        );
        publisher.discard(staged);
        let _ = std::fs::remove_dir_all(scratch);
        match report {
            Ok(r) => Some(r),
            Err(e) => return fail(e.to_string()),
        }
    };
    let files = snapshot.files.len();
    let hook_failed = hook.as_ref().is_some_and(|h| !h.success);
    let blocked = blocking && (!problems.is_empty() || hook_failed);
    let (state, description) = if blocked {
        let first = problems
            .first()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "the validation command failed".into());
        (
            State::Failure,
            format!(
                "{} problem(s), would not publish: {first}",
                problems.len().max(1)
            ),
        )
    } else if problems.is_empty() && !hook_failed {
        (
            State::Success,
            format!("{files} file(s) valid, would publish"),
        )
    } else {
        (
            State::Success,
            format!(
                "would publish with {} warning(s) (policy: warn)",
                problems.len()
            ),
        )
    };
    Preview {
        pr,
        sha: sha.clone(),
        context: "ferry/dags",
        state,
        description,
        comment: comment::dags_comment(name, pr, &sha, files, &problems, hook.as_ref(), None),
        detail: serde_json::json!({ "problems": problems, "hook": hook }),
    }
}

/// One target's part of a platform preview.
struct Planned {
    preview: TargetPreview,
    /// The first problem, for the status description.
    first_problem: Option<String>,
    /// Could not plan at all (cluster or AWS unreachable).
    unavailable: bool,
    detail: serde_json::Value,
}

fn unavailable(target: &str, message: String) -> Planned {
    Planned {
        preview: TargetPreview {
            target: target.into(),
            create: 0,
            update: 0,
            delete: 0,
            unchanged: 0,
            failed: 1,
            errors: vec![message.clone()],
            sections: Vec::new(),
        },
        first_problem: Some(message.clone()),
        unavailable: true,
        detail: serde_json::json!({ "error": message }),
    }
}

async fn plan_kubernetes(
    source: &GitSource,
    config: &KubernetesTargetConfig,
    commit: Oid,
) -> Planned {
    let sha = commit.to_string();
    let mirror = source.mirror_path().to_path_buf();
    let path = config.path.clone();
    let manifests = tokio::task::block_in_place(|| {
        crate::desired::manifests::read_mirror(&mirror, commit, &path)
    });
    let planned = match crate::kubernetes::client::connect(config.kubeconfig.as_deref()).await {
        Ok(client) => {
            crate::kubernetes::plan_revision(&client, &source.name, &sha, config, manifests)
                .await
                .map_err(|e| crate::kubernetes::plan::describe(&e))
        }
        Err(e) => Err(e.to_string()),
    };
    let plan = match planned {
        Ok(plan) => plan,
        Err(message) => {
            return unavailable(
                "kubernetes",
                format!("cannot plan against the cluster: {message}"),
            );
        }
    };
    let mut preview = TargetPreview::from_kube_plan(&plan);
    preview.target = "kubernetes".into();
    let first_problem = plan.errors.first().map(|e| e.to_string()).or_else(|| {
        plan.objects
            .iter()
            .find_map(|o| Some(format!("{}: {}", o.id, o.error.as_ref()?)))
    });
    Planned {
        preview,
        first_problem,
        unavailable: false,
        detail: serde_json::to_value(&plan).unwrap_or_default(),
    }
}

#[cfg(feature = "aws")]
async fn plan_aws(
    source: &GitSource,
    config: &crate::config::AwsTargetConfig,
    commit: Oid,
) -> Planned {
    let mirror = source.mirror_path().to_path_buf();
    let file = config.file.clone();
    let platform = tokio::task::block_in_place(|| {
        crate::desired::platform::read_mirror(&mirror, commit, &file)
    });
    let platform = match platform {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Planned {
                preview: TargetPreview::from_aws_plan(&crate::aws::AwsPlan::default()),
                first_problem: None,
                unavailable: false,
                detail: serde_json::json!({ "note": format!("{file} is absent: nothing declared") }),
            };
        }
        Err(errors) => {
            let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            let mut preview = TargetPreview::from_aws_plan(&crate::aws::AwsPlan::default());
            preview.failed = messages.len();
            preview.errors = messages.clone();
            return Planned {
                preview,
                first_problem: messages.first().cloned(),
                unavailable: false,
                detail: serde_json::json!({ "errors": messages }),
            };
        }
    };
    let provenance = crate::aws::Provenance {
        source: source.name.clone(),
        repo: String::new(),
        commit: commit.to_string(),
    };
    let clients = crate::aws::clients(&platform, config).await;
    match crate::aws::plan(&clients, &platform, &provenance, config.prune).await {
        Ok(plan) => Planned {
            preview: TargetPreview::from_aws_plan(&plan),
            first_problem: plan.errors.first().cloned(),
            unavailable: false,
            detail: serde_json::to_value(&plan).unwrap_or_default(),
        },
        Err(e) => unavailable("aws", format!("cannot plan against AWS: {e}")),
    }
}

fn platform_preview(name: &str, pr: u64, commit: Oid, planned: Vec<Planned>) -> Preview {
    let sha = commit.to_string();
    let how_to =
        format!("Full plan: `ferry plan --config ferry.yaml --revision refs/pull/{pr}/head`.");
    let failed: usize = planned.iter().map(|p| p.preview.failed).sum();
    let first = planned.iter().find_map(|p| p.first_problem.clone());
    let (state, description) = if planned.iter().any(|p| p.unavailable) {
        (State::Error, first.unwrap_or_default())
    } else if failed > 0 {
        (
            State::Failure,
            format!("{failed} problem(s): {}", first.unwrap_or_default()),
        )
    } else {
        let sum =
            |f: fn(&TargetPreview) -> usize| planned.iter().map(|p| f(&p.preview)).sum::<usize>();
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
    let detail = serde_json::Value::Object(
        planned
            .iter()
            .map(|p| (p.preview.target.clone(), p.detail.clone()))
            .collect(),
    );
    let previews: Vec<TargetPreview> = planned.into_iter().map(|p| p.preview).collect();
    Preview {
        pr,
        sha: sha.clone(),
        context: "ferry/plan",
        state,
        description,
        comment: comment::platform_comment(name, pr, &sha, &previews, &how_to),
        detail,
    }
}
