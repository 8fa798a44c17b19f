//! OpenSSH `known_hosts` matching, so SSH sources are pinned to known keys.
//!
//! libgit2 hands ferry the server's raw host key; ferry accepts it only when a
//! line of the configured file lists that exact key for that host. Supports
//! plain and hashed (`|1|salt|hash`) host names, `[host]:port`, `*`/`?`
//! wildcards, `!` negation and `@revoked`. `@cert-authority` lines are
//! ignored: host certificates are not supported.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Trusted,
    /// The host is listed, but with other keys: possibly an attack.
    Mismatch,
    Revoked,
    UnknownHost,
}

struct Entry {
    revoked: bool,
    patterns: String,
    key_type: String,
    key: Vec<u8>,
}

pub struct KnownHosts {
    entries: Vec<Entry>,
}

impl KnownHosts {
    pub fn parse(text: &str) -> KnownHosts {
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or("");
            let mut revoked = false;
            if first.starts_with('@') {
                match first {
                    "@revoked" => revoked = true,
                    _ => continue,
                }
                first = fields.next().unwrap_or("");
            }
            let (Some(key_type), Some(key_b64)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(key) = STANDARD.decode(key_b64) else {
                continue;
            };
            entries.push(Entry {
                revoked,
                patterns: first.to_string(),
                key_type: key_type.to_string(),
                key,
            });
        }
        KnownHosts { entries }
    }

    /// `host` as OpenSSH writes it: `name` for port 22, else `[name]:port`.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Verdict {
        let name = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| host_matches(&e.patterns, &name))
            .collect();
        if matching.iter().any(|e| e.revoked && e.key == key) {
            Verdict::Revoked
        } else if matching.iter().any(|e| !e.revoked && e.key == key) {
            Verdict::Trusted
        } else if matching.iter().any(|e| !e.revoked) {
            Verdict::Mismatch
        } else {
            Verdict::UnknownHost
        }
    }

    /// Key types listed for a host, for error messages.
    pub fn key_types_for(&self, host: &str, port: u16) -> Vec<String> {
        let name = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        self.entries
            .iter()
            .filter(|e| !e.revoked && host_matches(&e.patterns, &name))
            .map(|e| e.key_type.clone())
            .collect()
    }
}

fn host_matches(patterns: &str, name: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_matches(hashed, name);
    }
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(negated, name) {
                return false;
            }
        } else if wildcard(pattern, name) {
            matched = true;
        }
    }
    matched
}

fn hashed_matches(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH pattern: `*` any run, `?` one character; case-insensitive.
fn wildcard(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let n: Vec<char> = name.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &[u8] = b"\x00\x00\x00\x0bssh-ed25519key-a";
    const KEY_B: &[u8] = b"\x00\x00\x00\x0bssh-ed25519key-b";

    fn line(patterns: &str, key: &[u8]) -> String {
        format!("{patterns} ssh-ed25519 {}\n", STANDARD.encode(key))
    }

    #[test]
    fn plain_and_port_entries() {
        let kh = KnownHosts::parse(&(line("github.com", KEY_A) + &line("[127.0.0.1]:2222", KEY_B)));
        assert_eq!(kh.check("github.com", 22, KEY_A), Verdict::Trusted);
        assert_eq!(kh.check("github.com", 22, KEY_B), Verdict::Mismatch);
        assert_eq!(kh.check("127.0.0.1", 2222, KEY_B), Verdict::Trusted);
        assert_eq!(kh.check("127.0.0.1", 22, KEY_B), Verdict::UnknownHost);
        assert_eq!(kh.check("gitlab.com", 22, KEY_A), Verdict::UnknownHost);
    }

    #[test]
    fn hashed_wildcard_negation_and_revoked() {
        // Hash of "example.org" with salt "salt1234", as ssh-keygen -H computes it.
        let salt = b"salt1234";
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"example.org");
        let hashed = format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let text = line(&hashed, KEY_A)
            + &line("*.corp,!evil.corp", KEY_B)
            + &format!("@revoked * ssh-ed25519 {}\n", STANDARD.encode(b"stolen"));
        let kh = KnownHosts::parse(&text);
        assert_eq!(kh.check("example.org", 22, KEY_A), Verdict::Trusted);
        assert_eq!(kh.check("git.corp", 22, KEY_B), Verdict::Trusted);
        assert_eq!(kh.check("evil.corp", 22, KEY_B), Verdict::UnknownHost);
        assert_eq!(kh.check("git.corp", 22, b"stolen"), Verdict::Revoked);
    }
}
