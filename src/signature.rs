//! Commit signature policy: a source with `verify.allowed_signers` accepts a
//! branch head only when it carries an SSH signature (git's `gpg.format=ssh`)
//! by a key listed in that file, in git's `gpg.ssh.allowedSignersFile` format.
//!
//! Verification is done here, in-process, rather than by `git verify-commit`
//! and `ssh-keygen`, so the image needs neither and a failure can say exactly
//! which key signed and why it is refused. Options ferry cannot honour
//! (`cert-authority`, `valid-after`, `valid-before`) are refused when the file
//! is read instead of being ignored: ignoring an expiry would widen trust.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// git signs commits in this SSHSIG namespace.
const NAMESPACE: &str = "git";

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read allowed signers file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "commit {commit} is not signed; this source only accepts commits signed with an SSH key listed in {allowed}. Sign it (`git config gpg.format ssh`, `git commit -S`) and push again"
    )]
    Unsigned { commit: Oid, allowed: String },
    #[error(
        "commit {commit} has an OpenPGP signature; ferry verifies SSH signatures only (gpg.format=ssh) against {allowed}"
    )]
    OpenPgp { commit: Oid, allowed: String },
    #[error("commit {commit}: the signature cannot be read: {message}")]
    Malformed { commit: Oid, message: String },
    #[error(
        "commit {commit} is signed by {fingerprint}, a key not listed for namespace \"git\" in {allowed}; add the signer's public key there or re-sign with a listed key"
    )]
    Untrusted {
        commit: Oid,
        fingerprint: String,
        allowed: String,
    },
    #[error(
        "commit {commit}: the signature by {principal} ({fingerprint}) does not match the commit's content; the commit was altered after signing or the signature is forged"
    )]
    Invalid {
        commit: Oid,
        principal: String,
        fingerprint: String,
    },
    #[error("commit {commit}: {message}")]
    Git { commit: Oid, message: String },
}

impl SignatureError {
    /// The commit itself is refused (as opposed to the policy file being
    /// unreadable, which is the operator's to fix).
    pub fn rejects_commit(&self) -> bool {
        !matches!(
            self,
            SignatureError::Read { .. } | SignatureError::Parse { .. }
        )
    }
}

#[derive(Debug)]
struct Signer {
    principals: String,
    key: PublicKey,
    /// None: every namespace.
    namespaces: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct AllowedSigners {
    path: PathBuf,
    signers: Vec<Signer>,
}

/// Who signed an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: String,
    pub fingerprint: String,
}

impl AllowedSigners {
    /// Reads the file; called for every verification so a rotated key takes
    /// effect without a restart.
    pub fn load(path: &Path) -> Result<AllowedSigners, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignatureError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AllowedSigners::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AllowedSigners, SignatureError> {
        let mut signers = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parse_error = |message: String| SignatureError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            signers.push(parse_line(line).map_err(parse_error)?);
        }
        if signers.is_empty() {
            return Err(SignatureError::Parse {
                path: path.to_path_buf(),
                line: 1,
                message: "no signers listed: every commit would be refused. Add lines `principal key-type base64-key`".into(),
            });
        }
        Ok(AllowedSigners {
            path: path.to_path_buf(),
            signers,
        })
    }

    /// Verifies the signature on `commit`.
    pub fn verify(&self, repo: &Repository, commit: Oid) -> Result<Verified, SignatureError> {
        let allowed = self.path.display().to_string();
        let (signature, signed) = match repo.extract_signature(&commit, None) {
            Ok(pair) => pair,
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(SignatureError::Unsigned { commit, allowed });
            }
            Err(e) => {
                return Err(SignatureError::Git {
                    commit,
                    message: e.message().to_string(),
                });
            }
        };
        let armored = String::from_utf8_lossy(&signature);
        if armored.contains("BEGIN PGP SIGNATURE") {
            return Err(SignatureError::OpenPgp { commit, allowed });
        }
        let sig =
            SshSig::from_pem(armored.trim().as_bytes()).map_err(|e| SignatureError::Malformed {
                commit,
                message: e.to_string(),
            })?;
        let signing_key = PublicKey::from(sig.public_key().clone());
        let fingerprint = signing_key.fingerprint(HashAlg::Sha256).to_string();
        let signer = self.signers.iter().find(|s| {
            s.key.key_data() == sig.public_key()
                && s.namespaces
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| n == NAMESPACE))
        });
        let Some(signer) = signer else {
            return Err(SignatureError::Untrusted {
                commit,
                fingerprint,
                allowed,
            });
        };
        signer
            .key
            .verify(NAMESPACE, &signed, &sig)
            .map_err(|_| SignatureError::Invalid {
                commit,
                principal: signer.principals.clone(),
                fingerprint: fingerprint.clone(),
            })?;
        Ok(Verified {
            principal: signer.principals.clone(),
            fingerprint,
        })
    }
}

fn is_key_type(token: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
        .iter()
        .any(|p| token.starts_with(p))
}

/// `principals [options] key-type base64-key [comment]`
fn parse_line(line: &str) -> Result<Signer, String> {
    let tokens = split_unquoted(line, char::is_whitespace);
    let mut tokens = tokens.iter().filter(|t| !t.is_empty());
    let principals = tokens
        .next()
        .ok_or("expected `principal key-type base64-key`")?
        .trim_matches('"')
        .to_string();
    let mut next = tokens
        .next()
        .ok_or("expected a key after the principals")?
        .as_str();
    let mut namespaces = None;
    if !is_key_type(next) {
        for option in split_unquoted(next, |c| c == ',') {
            let (name, value) = option.split_once('=').unwrap_or((option.as_str(), ""));
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    namespaces = Some(
                        value
                            .trim_matches('"')
                            .split(',')
                            .map(|n| n.trim().to_string())
                            .collect(),
                    )
                }
                "cert-authority" | "valid-after" | "valid-before" => {
                    return Err(format!(
                        "option `{name}` is not supported by ferry; list the signer's own key without it"
                    ));
                }
                other => return Err(format!("unknown option `{other}`")),
            }
        }
        next = tokens.next().ok_or(
            "expected a key type (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa) after the options",
        )?;
    }
    let key_type = next;
    if !is_key_type(key_type) {
        return Err(format!(
            "`{key_type}` is not an SSH key type (ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa)"
        ));
    }
    let base64 = tokens
        .next()
        .ok_or("expected the base64 key after its type")?;
    let key = PublicKey::from_openssh(&format!("{key_type} {base64}"))
        .map_err(|e| format!("cannot read the {key_type} key: {e}"))?;
    Ok(Signer {
        principals,
        key,
        namespaces,
    })
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(text: &str, sep: impl Fn(char) -> bool) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && sep(c) {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBGZ/5iJnz239ewZ01HqaLlLuem2FHWRXel15nA2av+";

    fn parse(text: &str) -> Result<AllowedSigners, SignatureError> {
        AllowedSigners::parse(Path::new("allowed_signers"), text)
    }

    #[test]
    fn reads_gits_allowed_signers_format() {
        let signers = parse(&format!(
            "# team\n\nalice@example.com {ED25519} alice laptop\n\"bob@example.com,carol@example.com\" namespaces=\"git,file\" {ED25519}\n"
        ))
        .unwrap();
        assert_eq!(signers.signers.len(), 2);
        assert_eq!(signers.signers[0].principals, "alice@example.com");
        assert_eq!(signers.signers[0].namespaces, None);
        assert_eq!(
            signers.signers[1].namespaces.as_deref(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
    }

    #[test]
    fn problems_name_the_file_and_line() {
        for (text, line, says) in [
            (format!("a@b {ED25519}\nbob\n"), 2, "expected a key"),
            (
                format!("a@b valid-before=20300101 {ED25519}"),
                1,
                "option `valid-before` is not supported",
            ),
            ("a@b ssh-ed25519 bm90LWEta2V5".to_string(), 1, "cannot read"),
            (format!("a@b nonsense {ED25519}"), 1, "unknown option"),
            ("# nobody\n".to_string(), 1, "no signers listed"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("allowed_signers:{line}: {says}")),
                "{text:?}: {err}"
            );
        }
    }
}
