//! Commit signature policy: a source with `verify` accepts a branch head
//! only when it carries a signature by a listed key: SSH (git's
//! `gpg.format=ssh`, keys in git's `gpg.ssh.allowedSignersFile` format),
//! OpenPGP (gpg's default; [`openpgp`]), or GitHub's own web-flow key for the
//! commits GitHub makes, optionally only for merges of signed PR heads.
//!
//! Verification is done here, in-process, rather than by `git verify-commit`,
//! `ssh-keygen` or `gpg`, so the image needs none of them and a failure can
//! say exactly which key signed and why it is refused. Options ferry cannot
//! honour (`cert-authority`, `valid-after`, `valid-before`) are refused when
//! the file is read instead of being ignored: ignoring an expiry would widen
//! trust.

mod openpgp;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{GithubCommits, VerifyConfig};

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
        "commit {commit} is not signed; this source only accepts commits signed with a key listed in {allowed}. Sign it (`git commit -S`) and push again"
    )]
    Unsigned { commit: Oid, allowed: String },
    #[error(
        "commit {commit} has an OpenPGP signature, but this source lists no OpenPGP keys (verify.openpgp_keys, verify.github_keys); it accepts SSH signatures by keys in {allowed}"
    )]
    OpenPgp { commit: Oid, allowed: String },
    #[error(
        "commit {commit} has an SSH signature, but this source lists no SSH keys (verify.allowed_signers); it accepts OpenPGP signatures by keys in {allowed}"
    )]
    NoSshKeys { commit: Oid, allowed: String },
    #[error("commit {commit}: the signature by {fingerprint} is refused: {why}")]
    KeyNotValid {
        commit: Oid,
        fingerprint: String,
        why: String,
    },
    #[error(
        "commit {commit} was made by GitHub ({fingerprint}), and verify.github_commits is merges_of_signed_heads: {why}"
    )]
    GithubCommit {
        commit: Oid,
        fingerprint: String,
        why: String,
    },
    #[error("commit {commit}: the signature cannot be read: {message}")]
    Malformed { commit: Oid, message: String },
    #[error(
        "commit {commit} is signed by {fingerprint}, a key not listed in {allowed}; add the signer's public key there or re-sign with a listed key"
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

#[derive(Debug, Clone)]
struct Signer {
    principals: String,
    key: PublicKey,
    /// None: every namespace.
    namespaces: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
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

    /// Verifies an SSH signature over `signed`, the commit without its
    /// `gpgsig` header.
    fn verify_signature(
        &self,
        commit: Oid,
        signature: &[u8],
        signed: &[u8],
    ) -> Result<Verified, SignatureError> {
        let allowed = self.path.display().to_string();
        let armored = String::from_utf8_lossy(signature);
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
            .verify(NAMESPACE, signed, &sig)
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

/// A source's whole `verify` policy, read from its files.
#[derive(Debug)]
pub struct Policy {
    ssh: Option<AllowedSigners>,
    people: Option<openpgp::Keyring>,
    github: Option<openpgp::Keyring>,
    config: VerifyConfig,
}

impl Policy {
    /// Reads every file `verify` names; called for every verification so a
    /// rotated key takes effect without a restart.
    pub fn load(config: &VerifyConfig) -> Result<Policy, SignatureError> {
        let keyring = |files: &[PathBuf]| {
            (!files.is_empty())
                .then(|| openpgp::Keyring::load(files))
                .transpose()
        };
        Ok(Policy {
            ssh: config
                .allowed_signers
                .as_deref()
                .map(AllowedSigners::load)
                .transpose()?,
            people: keyring(&config.openpgp_keys)?,
            github: keyring(&config.github_keys)?,
            config: config.clone(),
        })
    }

    /// Each file `verify` names, read as [`Policy::load`] reads it; an
    /// error comes with the file's config key.
    pub fn check(config: &VerifyConfig) -> Result<(), (String, String)> {
        for (key, path) in config.files() {
            let read = if key == "allowed_signers" {
                AllowedSigners::load(path).map(drop)
            } else {
                openpgp::Keyring::load(&[path.to_path_buf()]).map(drop)
            };
            read.map_err(|e| (key, e.to_string()))?;
        }
        Ok(())
    }

    fn allowed(&self) -> String {
        self.config
            .files()
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Verifies the signature on `commit`.
    pub fn verify(&self, repo: &Repository, commit: Oid) -> Result<Verified, SignatureError> {
        self.verify_at(repo, commit, SystemTime::now())
    }

    pub fn verify_at(
        &self,
        repo: &Repository,
        commit: Oid,
        now: SystemTime,
    ) -> Result<Verified, SignatureError> {
        let allowed = self.allowed();
        let (signature, signed) = extract(repo, commit, &allowed)?;
        const PGP: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
        if !signature.windows(PGP.len()).any(|w| w == PGP) {
            let Some(ssh) = &self.ssh else {
                return Err(SignatureError::NoSshKeys { commit, allowed });
            };
            return ssh.verify_signature(commit, &signature, &signed);
        }
        let expired = self.config.expired_keys;
        let mut untrusted = None;
        for (keyring, by_github) in [(&self.people, false), (&self.github, true)] {
            let Some(keyring) = keyring else { continue };
            match keyring.verify(commit, &signature, &signed, expired, &allowed, now) {
                Err(e @ SignatureError::Untrusted { .. }) => untrusted = Some(e),
                Ok(verified) if by_github => {
                    return self.github_made(repo, commit, verified, now);
                }
                other => return other,
            }
        }
        Err(untrusted.unwrap_or(SignatureError::OpenPgp { commit, allowed }))
    }

    /// A commit GitHub signed: accepted as is, or (merges_of_signed_heads)
    /// only as a merge whose PR head a listed person signed.
    fn github_made(
        &self,
        repo: &Repository,
        commit: Oid,
        by_github: Verified,
        now: SystemTime,
    ) -> Result<Verified, SignatureError> {
        if self.config.github_commits == GithubCommits::Any {
            return Ok(by_github);
        }
        let refuse = |why: String| SignatureError::GithubCommit {
            commit,
            fingerprint: by_github.fingerprint.clone(),
            why,
        };
        let git = |e: git2::Error| SignatureError::Git {
            commit,
            message: e.message().to_string(),
        };
        let object = repo.find_commit(commit).map_err(git)?;
        if object.parent_count() != 2 {
            return Err(refuse(format!(
                "it has {} parent(s), so it is not a merge whose PR head can be checked (a squash merge or a web edit); merge with a merge commit, or push a signed commit",
                object.parent_count()
            )));
        }
        let head = object.parent_id(1).map_err(git)?;
        // The PR head must be a person's: GitHub's key does not count twice.
        let person = Policy {
            ssh: self.ssh.clone(),
            people: self.people.clone(),
            github: None,
            config: self.config.clone(),
        };
        match person.verify_at(repo, head, now) {
            Ok(signer) => Ok(Verified {
                principal: format!(
                    "{} (GitHub merge of {head}, signed by {})",
                    by_github.principal, signer.principal
                ),
                fingerprint: signer.fingerprint,
            }),
            Err(e) => Err(refuse(format!("its PR head {head} is not accepted: {e}"))),
        }
    }
}

/// The signature and the signed bytes (the commit without `gpgsig`).
fn extract(
    repo: &Repository,
    commit: Oid,
    allowed: &str,
) -> Result<(Vec<u8>, Vec<u8>), SignatureError> {
    match repo.extract_signature(&commit, None) {
        Ok((signature, signed)) => Ok((signature.to_vec(), signed.to_vec())),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Err(SignatureError::Unsigned {
            commit,
            allowed: allowed.to_string(),
        }),
        Err(e) => Err(SignatureError::Git {
            commit,
            message: e.message().to_string(),
        }),
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

#[cfg(test)]
mod openpgp_tests {
    use super::*;
    use crate::config::ExpiredKeys;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/signatures")
            .join(name)
    }

    /// A bare repo holding the fixture commit objects (their trees and
    /// first parents are absent, as the fixtures' README says).
    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        for sha in ["e2be7fa", "8a56ecb", "1cab59e", "91a5cdf"] {
            let bytes =
                std::fs::read(fixture(&format!("kubernetes-git-sync-{sha}.commit"))).unwrap();
            let oid = repo
                .odb()
                .unwrap()
                .write(git2::ObjectType::Commit, &bytes)
                .unwrap();
            assert!(oid.to_string().starts_with(sha), "{oid}");
        }
        (dir, repo)
    }

    fn oid(repo: &Repository, prefix: &str) -> Oid {
        repo.revparse_single(prefix).unwrap().id()
    }

    fn policy(config: VerifyConfig) -> Policy {
        Policy::load(&config).unwrap()
    }

    fn github(file: &str) -> VerifyConfig {
        VerifyConfig {
            github_keys: vec![fixture(file)],
            ..VerifyConfig::default()
        }
    }

    /// 2026-12-01, after the 2017 key expired (2024-01-16).
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_083_200)
    }

    #[test]
    fn githubs_web_flow_signatures_verify_from_either_keyring_format() {
        let (_dir, repo) = repo();
        for file in ["github-web-flow.gpg", "github-web-flow.asc"] {
            let policy = policy(github(file));
            for (sha, key) in [
                ("e2be7fa", "968479A1AFF927E37D1A566BB5690EEEBB952194"),
                ("8a56ecb", "968479A1AFF927E37D1A566BB5690EEEBB952194"),
                // Signed in 2023 by the 2017 key, before it expired.
                ("1cab59e", "5DE3E0509C47EA3CF04A42D34AEE18F83AFDEB23"),
            ] {
                let verified = policy
                    .verify_at(&repo, oid(&repo, sha), now())
                    .unwrap_or_else(|e| panic!("{sha} with {file}: {e}"));
                assert_eq!(verified.fingerprint, key, "{sha}");
                assert!(verified.principal.contains("GitHub"), "{verified:?}");
            }
            let err = policy
                .verify_at(&repo, oid(&repo, "91a5cdf"), now())
                .unwrap_err();
            assert!(matches!(err, SignatureError::Unsigned { .. }), "{err}");
        }
    }

    #[test]
    fn an_expired_key_signs_nothing_when_the_policy_refuses_expired_keys() {
        let (_dir, repo) = repo();
        let policy = policy(VerifyConfig {
            expired_keys: ExpiredKeys::Refuse,
            ..github("github-web-flow.gpg")
        });
        let err = policy
            .verify_at(&repo, oid(&repo, "1cab59e"), now())
            .unwrap_err();
        assert!(
            err.to_string().contains("the key expired on 2024-01-16"),
            "{err}"
        );
        // The 2024 key has not expired: its commits still pass.
        policy
            .verify_at(&repo, oid(&repo, "e2be7fa"), now())
            .unwrap();
    }

    #[test]
    fn one_changed_byte_breaks_the_signature() {
        let (_dir, repo) = repo();
        let policy = policy(github("github-web-flow.gpg"));
        for sha in ["e2be7fa", "8a56ecb", "1cab59e"] {
            let bytes =
                std::fs::read(fixture(&format!("kubernetes-git-sync-{sha}.commit"))).unwrap();
            let text = String::from_utf8(bytes).unwrap();
            // The committer's timestamp, one second later.
            let at = text.find("committer ").unwrap();
            let line_end = at + text[at..].find('\n').unwrap();
            let mut tampered = text.into_bytes();
            let last = line_end - 7; // the last digit before " +0000"
            tampered[last] = if tampered[last] == b'9' {
                b'8'
            } else {
                tampered[last] + 1
            };
            let forged = repo
                .odb()
                .unwrap()
                .write(git2::ObjectType::Commit, &tampered)
                .unwrap();
            let err = policy.verify_at(&repo, forged, now()).unwrap_err();
            assert!(
                matches!(err, SignatureError::Invalid { .. }),
                "{sha} tampered: {err}"
            );
            assert!(err.rejects_commit());
        }
    }

    #[test]
    fn merges_of_signed_heads_refuses_a_merge_whose_pr_head_no_person_signed() {
        let (_dir, repo) = repo();
        let dir = tempfile::tempdir().unwrap();
        // Someone's SSH key: it signed none of these commits.
        let signers = dir.path().join("allowed_signers");
        std::fs::write(
            &signers,
            "dev@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHBGZ/5iJnz239ewZ01HqaLlLuem2FHWRXel15nA2av+\n",
        )
        .unwrap();
        let policy = policy(VerifyConfig {
            allowed_signers: Some(signers),
            github_commits: GithubCommits::MergesOfSignedHeads,
            ..github("github-web-flow.gpg")
        });
        // e2be7fa merges 8a56ecb, which GitHub (not a listed person) signed.
        let err = policy
            .verify_at(&repo, oid(&repo, "e2be7fa"), now())
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("merges_of_signed_heads")
                && text.contains("its PR head 8a56ecb")
                && !text.contains("no SSH keys"),
            "{text}"
        );
        // A commit GitHub made that is no merge (dependabot's) is refused too.
        let err = policy
            .verify_at(&repo, oid(&repo, "8a56ecb"), now())
            .unwrap_err();
        assert!(err.to_string().contains("not a merge"), "{err}");
    }
}
