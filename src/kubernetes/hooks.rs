//! Helm hooks that run something (Jobs, Pods), run by the applier in their
//! phase: for each release that changes in an apply, its pre-install /
//! pre-upgrade hooks before any object, its post-install / post-upgrade
//! hooks once the rest is applied and healthy; in weight order, each
//! awaited to completion, with Helm's delete policies. A Job is immutable,
//! so one that must run again is deleted and created anew (Helm's default
//! policy, before-hook-creation).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};

use super::apply::{Applier, ObjectOutcome, Status};
use super::client::{api_for, describe};
use super::discovery::Catalog;
use super::ownership::FIELD_MANAGER;
use crate::desired::manifests::{HookPhase, Manifest};

const POLL: Duration = Duration::from_millis(250);

/// The hooks of `phase` of the releases in `changed`, in the order they run.
pub(crate) fn due<'a>(
    hooks: &'a [Manifest],
    phase: HookPhase,
    changed: &HashSet<&str>,
) -> Vec<&'a Manifest> {
    let mut due: Vec<&Manifest> = hooks
        .iter()
        .filter(|h| h.hook.as_ref().is_some_and(|k| k.phase == phase))
        .filter(|h| h.release.as_deref().is_some_and(|r| changed.contains(r)))
        .collect();
    // Helm's order: weight, then kind, then name.
    due.sort_by(|a, b| {
        let key = |m: &Manifest| {
            (
                m.hook.as_ref().map_or(0, |h| h.weight),
                m.id.kind.clone(),
                m.id.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    due
}

impl Applier<'_> {
    /// Runs the hooks of `phase` of the releases in `changed`, in order,
    /// each outcome added to `outcomes`; stops at the first that fails and
    /// says whether all succeeded.
    pub(crate) async fn run_hooks(
        &self,
        catalog: &Catalog,
        hooks: &[Manifest],
        phase: HookPhase,
        changed: &HashSet<&str>,
        outcomes: &mut Vec<ObjectOutcome>,
    ) -> bool {
        for hook in due(hooks, phase, changed) {
            let outcome = self.run_hook(catalog, hook).await;
            let failed = outcome.status == Status::Failed;
            outcomes.push(outcome);
            if failed {
                return false;
            }
        }
        true
    }

    /// Runs one hook to its end; a Failed outcome says why.
    async fn run_hook(&self, catalog: &Catalog, m: &Manifest) -> ObjectOutcome {
        let hook = m.hook.as_ref().expect("only hooks are run");
        let outcome = |status: Status, error: Option<String>| ObjectOutcome {
            id: m.id.clone(),
            status,
            error,
            health: None,
        };
        let what = format!(
            "Helm hook {} ({} of {})",
            m.id,
            hook.phase.helm_names(),
            m.release.as_deref().unwrap_or("a release")
        );
        let Some(resource) = catalog.api_resource(&m.api_version, &m.id.kind) else {
            return outcome(
                Status::Failed,
                Some(format!(
                    "{what}: the cluster does not serve {}",
                    m.api_version
                )),
            );
        };
        let api = api_for(self.client, &resource, m.id.namespace.as_deref());
        let timeout = self.config.health_timeout.max(self.config.wait_timeout);
        if hook.delete_before
            && let Err(e) = self.delete_and_wait(&api, &m.id.name, timeout).await
        {
            return outcome(
                Status::Failed,
                Some(format!("{what}: cannot remove the previous run: {e}")),
            );
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = api
            .patch(&m.id.name, &params, &Patch::Apply(&m.object))
            .await
        {
            return outcome(Status::Failed, Some(format!("{what}: {}", describe(&e))));
        }
        let deadline = Instant::now() + timeout;
        let ended = loop {
            match api.get_opt(&m.id.name).await {
                Ok(Some(live)) => {
                    if let Some(end) =
                        finished(&m.id.kind, &serde_json::to_value(&live).unwrap_or_default())
                    {
                        break end;
                    }
                }
                Ok(None) => break Err("it was deleted before it finished".to_string()),
                Err(e) => break Err(describe(&e)),
            }
            if Instant::now() >= deadline {
                break Err(format!("it did not finish in {}s", timeout.as_secs()));
            }
            if self
                .cancel
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            {
                break Err("ferry is shutting down".to_string());
            }
            tokio::time::sleep(POLL).await;
        };
        let delete = match &ended {
            Ok(()) => hook.delete_on_success,
            Err(_) => hook.delete_on_failure,
        };
        if delete {
            let _ = self.delete_and_wait(&api, &m.id.name, timeout).await;
        }
        match ended {
            Ok(()) => outcome(Status::Applied, None),
            Err(why) => outcome(
                Status::Failed,
                Some(format!(
                    "{what} failed: {why}; nothing after it was applied"
                )),
            ),
        }
    }

    async fn delete_and_wait(
        &self,
        api: &kube::Api<kube::api::DynamicObject>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(describe(&e)),
        }
        let deadline = Instant::now() + timeout;
        loop {
            match api.get_opt(name).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(Some(_)) => return Err(format!("still there after {}s", timeout.as_secs())),
                Err(e) => return Err(describe(&e)),
            }
        }
    }
}

/// Whether a Job or Pod has ended, and how; None while it runs.
fn finished(kind: &str, live: &serde_json::Value) -> Option<Result<(), String>> {
    match kind {
        "Job" => {
            let conditions = live.pointer("/status/conditions")?.as_array()?;
            let holds = |t: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == t && c["status"] == "True")
            };
            if let Some(failed) = holds("Failed") {
                let why = failed["message"]
                    .as_str()
                    .or(failed["reason"].as_str())
                    .unwrap_or("the Job failed");
                return Some(Err(why.to_string()));
            }
            holds("Complete").map(|_| Ok(()))
        }
        _ => match live.pointer("/status/phase")?.as_str()? {
            "Succeeded" => Some(Ok(())),
            "Failed" => Some(Err("the Pod failed".to_string())),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_ends_by_its_conditions_and_a_pod_by_its_phase() {
        let job = |t: &str| json!({"status": {"conditions": [{"type": t, "status": "True", "message": "BackoffLimitExceeded"}]}});
        assert_eq!(finished("Job", &job("Complete")), Some(Ok(())));
        assert_eq!(
            finished("Job", &job("Failed")),
            Some(Err("BackoffLimitExceeded".into()))
        );
        assert_eq!(finished("Job", &json!({"status": {}})), None);
        assert_eq!(
            finished("Pod", &json!({"status": {"phase": "Running"}})),
            None
        );
        assert_eq!(
            finished("Pod", &json!({"status": {"phase": "Succeeded"}})),
            Some(Ok(()))
        );
    }
}
