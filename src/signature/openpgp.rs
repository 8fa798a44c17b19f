//! OpenPGP commit signatures: gpg's default format, and the one GitHub
//! signs the commits it makes with (merge button, web editor, bots).
//!
//! Keys come from keyring files (armored or binary, several keys each),
//! re-read at each check like the SSH list. A key is used only if its own
//! binding signatures verify. Expiry is judged at the signature's creation
//! time: a signature made while the key was valid stays good after the key
//! expires, unless `expired_keys: refuse`. A revoked key signs nothing.

use std::path::PathBuf;
use std::time::SystemTime;

use git2::Oid;
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, VerifyingKey};

use super::{SignatureError, Verified};
use crate::config::ExpiredKeys;

/// The OpenPGP keys of one policy, with the files they came from.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<(PathBuf, SignedPublicKey)>,
}

impl Keyring {
    /// Reads every key of every file; a file that holds none, or a key whose
    /// self-signatures do not verify, is an error naming the file.
    pub fn load(files: &[PathBuf]) -> Result<Keyring, SignatureError> {
        let mut keys = Vec::new();
        for file in files {
            let bytes = std::fs::read(file).map_err(|source| SignatureError::Read {
                path: file.clone(),
                source,
            })?;
            let parse_error = |message: String| SignatureError::Parse {
                path: file.clone(),
                line: 1,
                message,
            };
            let (parsed, _) = SignedPublicKey::from_reader_many(&bytes[..])
                .map_err(|e| parse_error(format!("not an OpenPGP keyring: {e}")))?;
            let mut found = 0;
            for key in parsed {
                let key = key.map_err(|e| parse_error(format!("unreadable key: {e}")))?;
                key.verify_bindings().map_err(|e| {
                    parse_error(format!(
                        "key {:X}: its self-signatures do not verify ({e}); export it again with `gpg --export`",
                        key.primary_key.fingerprint()
                    ))
                })?;
                keys.push((file.clone(), key));
                found += 1;
            }
            if found == 0 {
                return Err(parse_error(
                    "no public keys in this file; export them with `gpg --export [--armor] KEYID`"
                        .into(),
                ));
            }
        }
        Ok(Keyring { keys })
    }

    /// Verifies an armored detached signature over `signed`.
    pub fn verify(
        &self,
        commit: Oid,
        armored: &[u8],
        signed: &[u8],
        expired: ExpiredKeys,
        allowed: &str,
        now: SystemTime,
    ) -> Result<Verified, SignatureError> {
        let malformed = |message: String| SignatureError::Malformed { commit, message };
        let (signature, _) = DetachedSignature::from_armor_single(armored)
            .map_err(|e| malformed(format!("not an OpenPGP signature: {e}")))?;
        let sig = signature.signature;
        let issuer = issuer_text(&sig);
        let Some(created) = sig.created() else {
            return Err(malformed("the signature carries no creation time".into()));
        };
        let created = SystemTime::from(created);
        for (_, key) in &self.keys {
            let principal = key
                .details
                .users
                .first()
                .and_then(|u| u.id.as_str())
                .unwrap_or("(no user id)")
                .to_string();
            // The primary key, then each subkey, with what bounds its validity.
            let mut candidates: Vec<(&dyn Candidate, Validity)> = vec![(
                &key.primary_key,
                validity(
                    key.primary_key.created_at().into(),
                    newest(
                        key.details
                            .users
                            .iter()
                            .flat_map(|u| u.signatures.iter())
                            .chain(key.details.direct_signatures.iter()),
                    ),
                    !key.details.revocation_signatures.is_empty(),
                ),
            )];
            for sub in &key.public_subkeys {
                let revoked = sub
                    .signatures
                    .iter()
                    .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation));
                let binding = newest(
                    sub.signatures
                        .iter()
                        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding)),
                );
                let primary_revoked = !key.details.revocation_signatures.is_empty();
                candidates.push((
                    &sub.key,
                    validity(
                        sub.key.created_at().into(),
                        binding,
                        revoked || primary_revoked,
                    ),
                ));
            }
            for (candidate, validity) in candidates {
                if !issued_by(&sig, candidate) {
                    continue;
                }
                let fingerprint = candidate.fingerprint_text();
                candidate
                    .as_verifying()
                    .verify_dyn(&sig, signed)
                    .map_err(|_| SignatureError::Invalid {
                        commit,
                        principal: principal.clone(),
                        fingerprint: fingerprint.clone(),
                    })?;
                let refuse = |why: String| SignatureError::KeyNotValid {
                    commit,
                    fingerprint: fingerprint.clone(),
                    why,
                };
                if validity.revoked {
                    return Err(refuse("the key is revoked".into()));
                }
                if created < validity.created {
                    return Err(refuse("the signature predates the key".into()));
                }
                if let Some(expires) = validity.expires {
                    if created >= expires {
                        return Err(refuse(format!(
                            "the signature was made on {} but the key expired on {}",
                            day(created),
                            day(expires)
                        )));
                    }
                    if now >= expires && expired == ExpiredKeys::Refuse {
                        return Err(refuse(format!(
                            "the key expired on {} and verify.expired_keys is `refuse`",
                            day(expires)
                        )));
                    }
                }
                return Ok(Verified {
                    principal,
                    fingerprint,
                });
            }
        }
        Err(SignatureError::Untrusted {
            commit,
            fingerprint: issuer,
            allowed: allowed.to_string(),
        })
    }
}

/// When a key may sign.
struct Validity {
    created: SystemTime,
    expires: Option<SystemTime>,
    revoked: bool,
}

/// The newest self-signature decides expiry, as gpg takes it.
fn newest<'a>(sigs: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    sigs.max_by_key(|s| s.created().map(|c| c.as_secs()).unwrap_or(0))
}

fn validity(created: SystemTime, self_sig: Option<&Signature>, revoked: bool) -> Validity {
    let expires = self_sig
        .and_then(Signature::key_expiration_time)
        .map(std::time::Duration::from)
        .filter(|d| !d.is_zero())
        .map(|d| created + d);
    Validity {
        created,
        expires,
        revoked,
    }
}

/// A primary key or a subkey, seen the same way.
trait Candidate {
    fn fingerprint_text(&self) -> String;
    fn key_id(&self) -> pgp::types::KeyId;
    fn fingerprint_bytes(&self) -> Vec<u8>;
    fn as_verifying(&self) -> &dyn VerifyingKeyDyn;
}

/// `Signature::verify` takes `&impl VerifyingKey`; this lets one loop hand
/// it either kind of key.
trait VerifyingKeyDyn {
    fn verify_dyn(&self, sig: &Signature, data: &[u8]) -> pgp::errors::Result<()>;
}

impl<T: VerifyingKey> VerifyingKeyDyn for T {
    fn verify_dyn(&self, sig: &Signature, data: &[u8]) -> pgp::errors::Result<()> {
        sig.verify(self, data)
    }
}

impl<T: VerifyingKey> Candidate for T {
    fn fingerprint_text(&self) -> String {
        format!("{:X}", self.fingerprint())
    }
    fn key_id(&self) -> pgp::types::KeyId {
        self.legacy_key_id()
    }
    fn fingerprint_bytes(&self) -> Vec<u8> {
        self.fingerprint().as_ref().to_vec()
    }
    fn as_verifying(&self) -> &dyn VerifyingKeyDyn {
        self
    }
}

fn issued_by(sig: &Signature, key: &dyn Candidate) -> bool {
    let fingerprint = key.fingerprint_bytes();
    if sig
        .issuer_fingerprint()
        .iter()
        .any(|f| f.as_ref() == fingerprint.as_slice())
    {
        return true;
    }
    let id = key.key_id();
    sig.issuer_key_id()
        .iter()
        .any(|k| k.as_ref() == id.as_ref())
}

/// The issuer as a person reads it: the fingerprint if given, else the key id.
fn issuer_text(sig: &Signature) -> String {
    if let Some(f) = sig.issuer_fingerprint().first() {
        return format!("OpenPGP key {f:X}");
    }
    match sig.issuer_key_id().first() {
        Some(id) => format!(
            "OpenPGP key id {}",
            id.as_ref()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        ),
        None => "an OpenPGP key that names no issuer".into(),
    }
}

fn day(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .take(10)
        .collect()
}
