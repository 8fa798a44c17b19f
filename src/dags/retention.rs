//! Which published revisions stay on the volume, and why.
//!
//! A superseded revision is kept while any rule holds it: the newest `keep`,
//! superseded less than `max_age` ago, or (when ferry can ask Airflow) in use
//! by a queued or running run, parsed as a DAG's current version, or run by
//! a run that ended within the window. Only what no rule holds is removed.
//! Pure: the caller reads the disk and asks Airflow.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use git2::Oid;
use serde::Serialize;

use crate::config::RetentionConfig;

/// Why a revision is kept. The Airflow reasons name what uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The link points at it.
    Live,
    /// Among the newest `keep` superseded revisions (1 = the last one live).
    Newest { rank: usize, keep: usize },
    /// Superseded less than `max_age` ago.
    Recent {
        superseded_secs: u64,
        max_age_secs: u64,
    },
    /// The `bundle_version` of a queued or running DAG run.
    Run {
        dag_id: String,
        run_id: String,
        state: String,
    },
    /// The version Airflow last parsed a DAG at (a DAG whose newest file
    /// fails to import stays on an older one).
    Dag { dag_id: String },
    /// The version of a run that ended within the window: clearing one of
    /// its tasks runs that task on this code again.
    Ended {
        dag_id: String,
        run_id: String,
        end_date: String,
    },
}

impl Reason {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Live => "live",
            Reason::Newest { .. } => "newest",
            Reason::Recent { .. } => "recent",
            Reason::Run { .. } => "airflow_run",
            Reason::Dag { .. } => "airflow_dag",
            Reason::Ended { .. } => "airflow_ended_run",
        }
    }

    pub const LABELS: [&'static str; 6] = [
        "live",
        "newest",
        "recent",
        "airflow_run",
        "airflow_dag",
        "airflow_ended_run",
    ];
}

/// What Airflow still uses, by revision (the commit as Airflow names it).
pub type Uses = HashMap<String, Vec<Reason>>;

/// At most this many uses of one revision are listed; `uses` counts them all.
const LISTED: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    pub commit: String,
    /// When it stopped being live (absent for the live one).
    pub superseded_at: Option<String>,
    pub reasons: Vec<Reason>,
    /// How many Airflow uses hold it (the list shows the first few).
    pub uses: usize,
}

#[derive(Debug, Default)]
pub struct Decision {
    pub remove: Vec<Oid>,
    pub kept: Vec<Kept>,
}

/// Decides over the revisions on disk: `current` is the live one, each of
/// `superseded` comes with when it stopped being live.
pub fn decide(
    current: Option<Oid>,
    mut superseded: Vec<(SystemTime, Oid)>,
    retention: &RetentionConfig,
    uses: &Uses,
    now: SystemTime,
) -> Decision {
    let mut decision = Decision::default();
    if let Some(live) = current {
        decision.kept.push(Kept {
            commit: live.to_string(),
            superseded_at: None,
            reasons: vec![Reason::Live],
            uses: uses.get(&live.to_string()).map_or(0, Vec::len),
        });
    }
    superseded.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (rank, (since, oid)) in superseded.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if rank < retention.keep {
            reasons.push(Reason::Newest {
                rank: rank + 1,
                keep: retention.keep,
            });
        }
        let age = now.duration_since(since).unwrap_or(Duration::ZERO);
        if age < retention.max_age {
            reasons.push(Reason::Recent {
                superseded_secs: age.as_secs(),
                max_age_secs: retention.max_age.as_secs(),
            });
        }
        let used = uses.get(&oid.to_string()).map_or(&[][..], Vec::as_slice);
        reasons.extend(used.iter().take(LISTED).cloned());
        if reasons.is_empty() {
            decision.remove.push(oid);
        } else {
            decision.kept.push(Kept {
                commit: oid.to_string(),
                superseded_at: Some(crate::status::timestamp(since)),
                reasons,
                uses: used.len(),
            });
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn retention(keep: usize, max_age_secs: u64) -> RetentionConfig {
        RetentionConfig {
            keep,
            max_age: Duration::from_secs(max_age_secs),
            ..RetentionConfig::default()
        }
    }

    #[test]
    fn static_rules_keep_the_newest_and_the_recent_and_drop_the_rest() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let ago = |s| now - Duration::from_secs(s);
        // Oldest first on purpose: the order on disk is not the order of supersession.
        let superseded = vec![(ago(9000), oid(1)), (ago(10), oid(3)), (ago(5000), oid(2))];
        let d = decide(
            Some(oid(4)),
            superseded,
            &retention(1, 3600),
            &Uses::new(),
            now,
        );
        assert_eq!(d.remove, vec![oid(2), oid(1)]);
        let kept: Vec<_> = d
            .kept
            .iter()
            .map(|k| (k.commit.clone(), k.reasons.clone()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (oid(4).to_string(), vec![Reason::Live]),
                (
                    oid(3).to_string(),
                    vec![
                        Reason::Newest { rank: 1, keep: 1 },
                        Reason::Recent {
                            superseded_secs: 10,
                            max_age_secs: 3600
                        }
                    ]
                ),
            ]
        );
    }

    #[test]
    fn a_revision_airflow_still_runs_is_kept_past_every_static_rule() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let old = now - Duration::from_secs(50_000);
        let superseded = vec![(old, oid(1)), (old - Duration::from_secs(1), oid(2))];
        let run = Reason::Run {
            dag_id: "train".into(),
            run_id: "manual__1".into(),
            state: "running".into(),
        };
        let mut uses = Uses::new();
        uses.insert(oid(2).to_string(), vec![run.clone(); 12]);
        let d = decide(Some(oid(3)), superseded, &retention(1, 60), &uses, now);
        assert!(d.remove.is_empty(), "{:?}", d.remove);
        let held = d
            .kept
            .iter()
            .find(|k| k.commit == oid(2).to_string())
            .unwrap();
        assert_eq!(held.reasons.len(), LISTED, "the list is capped");
        assert_eq!(held.uses, 12, "the count is not");
        assert!(held.reasons.iter().all(|r| *r == run));
    }
}
