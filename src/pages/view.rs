//! What the pages read from a revision record's `detail`: the same JSON
//! document `/api/v1/status/<source>/revisions/<sha>` serves, read back
//! into the few fields a person needs. Reading the served document (not
//! the agent's types) is what keeps a page and the API from disagreeing,
//! and Secret values are already redacted in it.

use serde::Deserialize;
use serde_json::Value;

/// Read as the API serves them: these two are plain data.
pub use crate::dags::HookReport as Hook;
pub use crate::problem::Problem;

/// A refused or failed evaluation (branch) or a DAGs preview.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Failure {
    pub kind: Option<String>,
    pub problems: Vec<Problem>,
    pub hook: Option<Hook>,
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DagsOutcome {
    pub published: bool,
    pub stats: Stats,
    pub warnings: Vec<Problem>,
    pub hook: Option<Hook>,
    pub skipped: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub files_written: usize,
    pub files_linked: usize,
    pub files_shared: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ObjectId {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.group.is_empty(), &self.namespace) {
            (true, Some(ns)) => write!(f, "{} {ns}/{}", self.kind, self.name),
            (true, None) => write!(f, "{} {}", self.kind, self.name),
            (false, Some(ns)) => write!(f, "{}.{} {ns}/{}", self.kind, self.group, self.name),
            (false, None) => write!(f, "{}.{} {}", self.kind, self.group, self.name),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Health {
    pub state: String,
    pub reason: Option<String>,
}

/// A Kubernetes apply outcome (branch).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KubeOutcome {
    pub objects: Vec<ObjectOutcome>,
    pub unchanged: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ObjectOutcome {
    pub id: ObjectId,
    pub status: String,
    pub error: Option<String>,
    pub health: Option<Health>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Origin {
    pub file: String,
    pub line: Option<usize>,
}

/// A Kubernetes plan (pull request preview).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KubePlan {
    pub objects: Vec<ObjectPlan>,
    pub errors: Vec<ManifestError>,
    pub prune_refused: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ManifestError {
    pub origin: Origin,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ObjectPlan {
    pub id: ObjectId,
    pub origin: Option<Origin>,
    pub action: String,
    pub changes: Vec<FieldChange>,
    pub error: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FieldChange {
    pub path: String,
    pub op: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// An AWS plan (preview) or outcome (branch): `changes` or `results`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Aws {
    pub changes: Vec<AwsChange>,
    pub results: Vec<AwsChange>,
    pub drift: Vec<String>,
    pub errors: Vec<String>,
    pub cleaned: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AwsChange {
    pub resource: String,
    pub action: String,
    pub fields: Vec<AwsField>,
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AwsField {
    pub field: String,
    pub before: String,
    pub after: String,
}

/// One target's part of a record, told apart by its shape.
pub enum Part {
    Dags(DagsOutcome),
    KubeOutcome(KubeOutcome),
    KubePlan(KubePlan),
    Aws(Aws),
    /// A shape this page does not know: shown as JSON.
    Other(Value),
}

impl Part {
    /// `branch` records hold outcomes; previews hold plans.
    pub fn read(value: &Value, preview: bool) -> Part {
        let has = |key: &str| value.get(key).is_some();
        let parsed = if has("stats") {
            serde_json::from_value(value.clone()).map(Part::Dags)
        } else if has("objects") && preview {
            serde_json::from_value(value.clone()).map(Part::KubePlan)
        } else if has("objects") {
            serde_json::from_value(value.clone()).map(Part::KubeOutcome)
        } else if has("changes") || has("results") {
            serde_json::from_value(value.clone()).map(Part::Aws)
        } else {
            return Part::Other(value.clone());
        };
        parsed.unwrap_or_else(|_| Part::Other(value.clone()))
    }
}

/// The record's first problem as `file:line: message`, if it names one.
pub fn first_problem(detail: &Value) -> Option<String> {
    let failure: Failure = serde_json::from_value(detail.clone()).ok()?;
    let first = failure.problems.first()?;
    Some(match first.line {
        Some(line) => format!("{}:{line}: {}", first.file, first.message),
        None => format!("{}: {}", first.file, first.message),
    })
}
