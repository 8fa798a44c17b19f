//! One problem in one file of a commit, whichever target's part of the
//! commit it is in: what the gate rejects a commit with, and what statuses,
//! PR comments and the status API list.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Path relative to the repository root.
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// 0-based YAML document of a multi-document file, past the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(file: &str, line: Option<usize>, message: String) -> Problem {
        Problem {
            file: file.to_string(),
            line,
            column: None,
            document: None,
            message,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let document = self
            .document
            .map(|d| format!(" (document {d})"))
            .unwrap_or_default();
        match (self.file.is_empty(), self.line, self.column) {
            (true, _, _) => write!(f, "{}", self.message),
            (false, Some(l), Some(c)) => {
                write!(f, "{}:{l}:{c}{document}: {}", self.file, self.message)
            }
            (false, Some(l), None) => write!(f, "{}:{l}{document}: {}", self.file, self.message),
            (false, None, _) => write!(f, "{}{document}: {}", self.file, self.message),
        }
    }
}
