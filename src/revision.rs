//! The narrow artifact between `source` and everything after it (what Flux
//! calls the artifact): which commit of which source, where its objects
//! can be read, how it was reached and who signed it. It never carries
//! credentials: previews, plans, applies and drift checks get this, not the
//! `GitSource`.

use std::path::PathBuf;

use git2::{Oid, Repository};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The tracked branch's head: evaluated to be applied.
    Branch,
    /// A pull request's head: previewed, never applied.
    PullRequest(u64),
    /// Asked for by `ferry plan --revision`.
    Requested,
}

impl Origin {
    /// As the status API names it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Origin::Branch => "branch",
            Origin::PullRequest(_) => "preview",
            Origin::Requested => "requested",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Revision {
    pub source: String,
    pub commit: Oid,
    /// The bare mirror holding the commit's objects.
    pub mirror: PathBuf,
    pub origin: Origin,
    /// `principal (SHA256:fingerprint)` when the source verifies signatures.
    pub signed_by: Option<String>,
}

impl Revision {
    pub fn sha(&self) -> String {
        self.commit.to_string()
    }

    /// The commit's first 12 hex digits, for logs and messages.
    pub fn short(&self) -> String {
        self.sha()[..12].to_string()
    }

    pub fn open(&self) -> Result<Repository, git2::Error> {
        Repository::open_bare(&self.mirror)
    }
}
