//! Health after apply, in the spirit of kstatus: an object is Current when
//! its controller has observed the applied generation and reports the
//! desired state; Failed when it reports it cannot get there; otherwise
//! InProgress until the timeout.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Health {
    Current,
    InProgress(String),
    Failed(String),
}

impl Health {
    pub fn is_final(&self) -> bool {
        !matches!(self, Health::InProgress(_))
    }
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_i64)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .get("status")?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn is_true(c: Option<&Value>) -> bool {
    c.and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
}

/// Assesses one live object.
pub fn assess(group: &str, kind: &str, object: &Value) -> Health {
    let generation = int(object, &["metadata", "generation"]).unwrap_or(0);
    let observed = int(object, &["status", "observedGeneration"]).unwrap_or(-1);
    let stale = || {
        Health::InProgress(format!(
            "controller has not observed generation {generation} yet"
        ))
    };
    match (group, kind) {
        ("apps", "Deployment") => {
            if observed < generation {
                return stale();
            }
            if let Some(c) = condition(object, "Progressing")
                && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
            {
                let msg = c
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("progress deadline exceeded");
                return Health::Failed(msg.to_string());
            }
            replicas_ready(object, "updatedReplicas", "availableReplicas")
        }
        ("apps", "StatefulSet") => {
            if observed < generation {
                return stale();
            }
            replicas_ready(object, "updatedReplicas", "readyReplicas")
        }
        ("apps", "DaemonSet") => {
            if observed < generation {
                return stale();
            }
            let want = int(object, &["status", "desiredNumberScheduled"]).unwrap_or(0);
            let ready = int(object, &["status", "numberReady"]).unwrap_or(0);
            let updated = int(object, &["status", "updatedNumberScheduled"]).unwrap_or(0);
            if ready >= want && updated >= want {
                Health::Current
            } else {
                Health::InProgress(format!("{ready}/{want} pods ready, {updated} updated"))
            }
        }
        ("batch", "Job") => {
            if is_true(condition(object, "Complete")) {
                Health::Current
            } else if is_true(condition(object, "Failed")) {
                let msg = condition(object, "Failed")
                    .and_then(|c| c.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("job failed");
                Health::Failed(msg.to_string())
            } else {
                Health::InProgress("job has not completed".into())
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if is_true(condition(object, "Established")) {
                Health::Current
            } else {
                Health::InProgress("not Established yet".into())
            }
        }
        _ => Health::Current,
    }
}

fn replicas_ready(object: &Value, updated_key: &str, ready_key: &str) -> Health {
    let want = int(object, &["spec", "replicas"]).unwrap_or(1);
    let updated = int(object, &["status", updated_key]).unwrap_or(0);
    let ready = int(object, &["status", ready_key]).unwrap_or(0);
    if updated >= want && ready >= want {
        Health::Current
    } else {
        Health::InProgress(format!("{ready}/{want} replicas ready, {updated} updated"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_states() {
        let mut d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3}, "status": {"observedGeneration": 1}});
        assert!(matches!(
            assess("apps", "Deployment", &d),
            Health::InProgress(_)
        ));
        d["status"] =
            json!({"observedGeneration": 2, "updatedReplicas": 3, "availableReplicas": 1});
        assert_eq!(
            assess("apps", "Deployment", &d),
            Health::InProgress("1/3 replicas ready, 3 updated".into())
        );
        d["status"]["availableReplicas"] = json!(3);
        assert_eq!(assess("apps", "Deployment", &d), Health::Current);
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "stuck"}]);
        assert_eq!(
            assess("apps", "Deployment", &d),
            Health::Failed("stuck".into())
        );
    }

    #[test]
    fn jobs_crds_and_the_rest() {
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(assess("batch", "Job", &done), Health::Current);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}});
        assert_eq!(
            assess("batch", "Job", &failed),
            Health::Failed("BackoffLimitExceeded".into())
        );
        assert!(
            !assess(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &json!({})
            )
            .is_final()
        );
        assert_eq!(assess("", "ConfigMap", &json!({})), Health::Current);
    }
}
