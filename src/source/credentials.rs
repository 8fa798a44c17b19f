//! libgit2 callbacks for one fetch: credentials, SSH host-key pinning,
//! deadline and cancellation.
//!
//! libgit2 calls the credentials callback again after a rejection, forever,
//! so the first rejection ends the fetch with a clear error. Secrets are read
//! here, at use time, and only ever handed to libgit2.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};

use super::known_hosts::{KnownHosts, Verdict};
use crate::config::AuthConfig;
use crate::secret::{self, Secret, SecretError};

pub(super) struct CallbackState<'a> {
    auth: &'a AuthConfig,
    url: &'a str,
    deadline: Instant,
    cancel: &'a AtomicBool,
    attempts: Cell<u32>,
    auth_error: RefCell<Option<String>>,
    host_key_error: RefCell<Option<String>>,
    timed_out: Cell<bool>,
}

impl<'a> CallbackState<'a> {
    pub(super) fn new(
        auth: &'a AuthConfig,
        url: &'a str,
        deadline: Instant,
        cancel: &'a AtomicBool,
    ) -> Self {
        CallbackState {
            auth,
            url,
            deadline,
            cancel,
            attempts: Cell::new(0),
            auth_error: RefCell::new(None),
            host_key_error: RefCell::new(None),
            timed_out: Cell::new(false),
        }
    }

    pub(super) fn auth_error(&self) -> Option<String> {
        self.auth_error.borrow().clone()
    }
    pub(super) fn host_key_error(&self) -> Option<String> {
        self.host_key_error.borrow().clone()
    }
    pub(super) fn timed_out(&self) -> bool {
        self.timed_out.get()
    }
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// True when the fetch must stop; libgit2 aborts when a progress callback says so.
    fn should_abort(&self) -> bool {
        if self.cancelled() {
            return true;
        }
        if Instant::now() >= self.deadline {
            self.timed_out.set(true);
            return true;
        }
        false
    }

    /// Callbacks for one connection. libgit2 connects anew for the fetch
    /// after the ref listing, so the rejection count restarts here.
    pub(super) fn callbacks(&self) -> RemoteCallbacks<'_> {
        self.attempts.set(0);
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, username_from_url, allowed| {
            self.credentials(username_from_url, allowed)
        });
        callbacks.certificate_check(|cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: let libgit2 and OpenSSL verify the chain as usual.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            match self.check_host_key(host, hostkey.hostkey()) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(detail) => {
                    let err = git2::Error::from_str(&detail);
                    *self.host_key_error.borrow_mut() = Some(detail);
                    Err(err)
                }
            }
        });
        callbacks.transfer_progress(|_| !self.should_abort());
        callbacks.sideband_progress(|_| !self.should_abort());
        callbacks
    }

    fn credentials(
        &self,
        username_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username_from_url.unwrap_or("git"));
        }
        let attempt = self.attempts.get() + 1;
        self.attempts.set(attempt);
        let fail = |detail: String| {
            let err = git2::Error::from_str(&detail);
            *self.auth_error.borrow_mut() = Some(detail);
            Err(err)
        };
        if attempt > 1 {
            return fail(format!(
                "the server rejected the configured credentials ({}); check them and their permissions on the repository",
                self.describe_auth()
            ));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &self.auth.ssh_key_file
        {
            if let Err(err) = std::fs::metadata(key) {
                return fail(format!(
                    "cannot read auth.ssh_key_file {}: {err}",
                    key.display()
                ));
            }
            return Cred::ssh_key(username_from_url.unwrap_or("git"), None, key, None);
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let secret = match self.http_secret() {
                Some(Ok(secret)) => secret,
                Some(Err(err)) => return fail(err.to_string()),
                None => {
                    return fail(format!(
                        "{} asks for credentials, but this source has no auth.token_file, token_env, password_file or password_env",
                        self.url
                    ));
                }
            };
            let username = self.auth.username.as_deref().unwrap_or("x-access-token");
            return Cred::userpass_plaintext(username, secret.expose());
        }
        fail(format!(
            "the server asks for an authentication method ferry is not configured for ({allowed:?})"
        ))
    }

    fn http_secret(&self) -> Option<Result<Secret, SecretError>> {
        let auth = self.auth;
        if let Some(path) = auth.token_file.as_ref().or(auth.password_file.as_ref()) {
            return Some(secret::from_file(path));
        }
        if let Some(var) = auth.token_env.as_ref().or(auth.password_env.as_ref()) {
            return Some(secret::from_env(var));
        }
        None
    }

    /// Names where the credentials came from, never their value.
    fn describe_auth(&self) -> String {
        let auth = self.auth;
        if let Some(p) = &auth.ssh_key_file {
            format!("auth.ssh_key_file {}", p.display())
        } else if let Some(p) = &auth.token_file {
            format!("auth.token_file {}", p.display())
        } else if let Some(p) = &auth.password_file {
            format!("auth.password_file {}", p.display())
        } else if let Some(v) = auth.token_env.as_ref().or(auth.password_env.as_ref()) {
            format!("environment variable {v}")
        } else {
            "no credentials configured".into()
        }
    }

    fn check_host_key(&self, host: &str, key: Option<&[u8]>) -> Result<(), String> {
        let Some(path) = &self.auth.known_hosts_file else {
            return Err(format!(
                "unknown host {host}: set auth.known_hosts_file to pin its key"
            ));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth.known_hosts_file {}: {e}", path.display()))?;
        let known = KnownHosts::parse(&text);
        let Some(key) = key else {
            return Err("the SSH library did not provide the raw host key".into());
        };
        let (_, port) = host_of(self.url);
        match known.check(host, port, key) {
            Verdict::Trusted => Ok(()),
            Verdict::UnknownHost => Err(format!(
                "host {host} (port {port}) is not in {}; add its key (ssh-keyscan -p {port} {host}) after verifying it",
                path.display()
            )),
            Verdict::Mismatch => Err(format!(
                "host {host} presented a key that does not match the {} key(s) pinned in {}; refusing (possible man-in-the-middle)",
                known.key_types_for(host, port).join("/"),
                path.display()
            )),
            Verdict::Revoked => Err(format!(
                "host {host} presented a key marked @revoked in {}",
                path.display()
            )),
        }
    }
}

/// Host and port of an SSH URL (`ssh://user@host:port/path` or `user@host:path`).
pub(crate) fn host_of(url: &str) -> (String, u16) {
    if let Some(rest) = url.strip_prefix("ssh://") {
        let authority = rest.split('/').next().unwrap_or("");
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if let Some(inner) = hostport.strip_prefix('[') {
            // [::1]:2222
            let (host, tail) = inner.split_once(']').unwrap_or((inner, ""));
            let port = tail
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(22);
            return (host.to_string(), port);
        }
        return match hostport.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse().unwrap_or(22)),
            None => (hostport.to_string(), 22),
        };
    }
    let before_colon = url.split(':').next().unwrap_or(url);
    let host = before_colon
        .rsplit_once('@')
        .map_or(before_colon, |(_, h)| h);
    (host.to_string(), 22)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_and_port_from_ssh_urls() {
        assert_eq!(
            host_of("ssh://git@127.0.0.1:2222/srv/r.git"),
            ("127.0.0.1".into(), 2222)
        );
        assert_eq!(
            host_of("ssh://git@github.com/acme/r.git"),
            ("github.com".into(), 22)
        );
        assert_eq!(
            host_of("git@github.com:acme/r.git"),
            ("github.com".into(), 22)
        );
        assert_eq!(host_of("ssh://[::1]:2200/r.git"), ("::1".into(), 2200));
    }
}
