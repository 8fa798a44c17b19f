//! OpenPGP-signed heads end to end: keys made and commits signed by the
//! real `gpg` (Debian's GnuPG, installed by `.ci/setup`), verified by a
//! running ferry with `verify.openpgp_keys` and `verify.github_keys`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A GnuPG home of the test's own, reached through a wrapper git can call.
struct Gpg {
    home: PathBuf,
    wrapper: PathBuf,
}

impl Gpg {
    fn new(dir: &Path) -> Gpg {
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let wrapper = dir.join("gpg-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec gpg --homedir '{}' \"$@\"\n",
                home.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Gpg { home, wrapper }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new(require_binary("/usr/bin/gpg"));
        cmd.arg("--homedir").arg(&self.home).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        cmd
    }

    /// A new signing key for `uid`; returns its fingerprint.
    fn key(&self, uid: &str, algo: &str) -> String {
        run(self
            .cmd()
            .args(["--quick-gen-key", uid, algo, "sign", "never"]));
        let listing = run(self.cmd().args(["--with-colons", "--list-keys", uid]));
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .expect("fingerprint")
    }

    /// Exports public keys into `file` (armored or binary).
    fn export(&self, fingerprints: &[&str], file: &Path, armor: bool) {
        let mut cmd = self.cmd();
        cmd.arg("--output").arg(file).arg("--export");
        if armor {
            cmd.arg("--armor");
        }
        run(cmd.args(fingerprints));
    }

    /// Makes `repo` sign its next commits with `fingerprint`.
    fn sign_with(&self, repo: &Repo, fingerprint: &str) {
        run(git(&repo.work)
            .args(["config", "gpg.program"])
            .arg(&self.wrapper));
        run(git(&repo.work).args(["config", "gpg.format", "openpgp"]));
        run(git(&repo.work).args(["config", "user.signingkey", fingerprint]));
        run(git(&repo.work).args(["config", "commit.gpgsign", "true"]));
    }
}

#[test]
fn openpgp_signed_heads_are_published_and_others_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let gpg = Gpg::new(tmp.path());
    let dev = gpg.key("Dev <dev@example.com>", "ed25519");
    let ops = gpg.key("Ops <ops@example.com>", "rsa2048");
    let stranger = gpg.key("Stranger <stranger@example.com>", "ed25519");
    // Stands in for GitHub's web-flow key: GitHub's own cannot sign here.
    let github = gpg.key("GitHub <noreply@github.com>", "rsa2048");
    let people = tmp.path().join("people.asc");
    gpg.export(&[&dev, &ops], &people, true);
    let web_flow = tmp.path().join("web-flow.gpg");
    gpg.export(&[&github], &web_flow, false);

    let repo = Repo::new(tmp.path(), "dags");
    gpg.sign_with(&repo, &dev);
    let first = repo.commit(&[("dags/a.py", Some("a = 1\n"))], "by dev");
    let daemon = git_daemon(tmp.path(), free_port());
    let port = free_port();
    let dest = tmp.path().join("dest");
    let config = dags_daemon_config(tmp.path(), port, daemon.port, &dest);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "    interval: 1s\n",
        &format!(
            "    interval: 1s\n    max_backoff: 1s\n    verify:\n      openpgp_keys: [{}]\n      github_keys: [{}]\n      github_commits: merges_of_signed_heads\n",
            people.display(),
            web_flow.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let ferry = spawn_ferry(&config, &tmp.path().join("ferry.log"), port, &[]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let status = |what: &str, want: &dyn Fn(&Value) -> bool| -> Value {
        eventually(Duration::from_secs(60), what, || {
            let (_, body) = http_get(addr, "/api/v1/status/dags");
            let v: Value = serde_json::from_str(&body).ok()?;
            want(&v).then_some(v)
        })
    };
    let refused = |commit: &str| {
        let v = status(&format!("{commit} refused"), &|v| {
            v["last_error"]["commit"] == commit
        });
        v["last_error"]["message"].as_str().unwrap().to_string()
    };

    // Ed25519 and RSA signatures by listed people: published, signer named.
    let v = status("dev's commit", &|v| {
        v["published_revision"] == first.as_str()
    });
    assert_eq!(
        v["signed_by"],
        format!("Dev <dev@example.com> ({dev})"),
        "{v}"
    );
    gpg.sign_with(&repo, &ops);
    let second = repo.commit(&[("dags/b.py", Some("b = 2\n"))], "by ops");
    status("ops's commit", &|v| {
        v["published_revision"] == second.as_str()
    });

    // Someone not listed: refused, naming the key; the last good stays.
    gpg.sign_with(&repo, &stranger);
    let unlisted = repo.commit(&[("dags/c.py", Some("c = 3\n"))], "by a stranger");
    let message = refused(&unlisted);
    assert!(
        message.contains(&format!("OpenPGP key {stranger}"))
            && message.contains("a key not listed"),
        "{message}"
    );

    // A listed signature over altered content: refused as such.
    gpg.sign_with(&repo, &dev);
    let signed = repo.commit(&[("dags/c.py", Some("c = 4\n"))], "by dev, then altered");
    let object = run(git(&repo.work).args(["cat-file", "commit", &signed]));
    let altered = object.replace("by dev, then altered", "by dev, then ALTERED");
    let path = tmp.path().join("altered.commit");
    std::fs::write(&path, altered).unwrap();
    let forged = run(git(&repo.work)
        .args(["hash-object", "-t", "commit", "-w"])
        .arg(&path))
    .trim()
    .to_string();
    run(git(&repo.work).args(["update-ref", "refs/heads/main", &forged]));
    repo.push("main");
    let message = refused(&forged);
    assert!(
        message.contains("does not match the commit's content") && message.contains(&dev),
        "{message}"
    );
    run(git(&repo.work).args(["reset", "-q", "--hard", &signed]));

    // A merge GitHub signed, of a PR head a listed person signed: published.
    run(git(&repo.work).args(["checkout", "-q", "-b", "feature", &second]));
    let head = repo.commit(&[("dags/d.py", Some("d = 5\n"))], "PR head by dev");
    repo.push("feature");
    run(git(&repo.work).args(["checkout", "-q", "main"]));
    run(git(&repo.work).args(["reset", "-q", "--hard", &second]));
    gpg.sign_with(&repo, &github);
    run(git(&repo.work).args([
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "Merge pull request #1",
        "feature",
    ]));
    repo.push("main");
    let merge = repo.head();
    let v = status("the GitHub merge", &|v| {
        v["published_revision"] == merge.as_str()
    });
    let by = v["signed_by"].as_str().unwrap();
    assert!(
        by.contains(&format!(
            "GitHub merge of {head}, signed by Dev <dev@example.com>"
        )),
        "{by}"
    );

    // Something else GitHub signed (a squash merge, a web edit): refused
    // under merges_of_signed_heads, with what to do.
    let squash = repo.commit(&[("dags/e.py", Some("e = 6\n"))], "Squash merge");
    let message = refused(&squash);
    assert!(
        message.contains("merges_of_signed_heads") && message.contains("not a merge"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_link(dest.join("current")).unwrap(),
        Path::new(".ferry").join(&merge),
        "the last good revision stays live"
    );
    stop_ferry(ferry);
}
