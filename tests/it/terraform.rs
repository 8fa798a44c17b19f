//! terraform/, deploy/ and the workflows under the offline checks: `terraform
//! fmt`, structure tests with python-hcl2, and checkov (Terraform, the
//! rendered Kubernetes manifests, GitHub Actions) with written skips only.
//! `terraform validate` needs the providers, which this machine cannot
//! download; the structure tests and checkov's graph stand in for it.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn lint_tool(name: &str) -> std::path::PathBuf {
    let path = root().join(".cache/lint-venv/bin").join(name);
    assert!(path.exists(), "{} missing: run .ci/setup", path.display());
    path
}

#[test]
fn terraform_is_formatted() {
    let terraform = std::env::var("FERRY_TERRAFORM").unwrap_or_else(|_| "terraform".into());
    let (ok, text) = run(Command::new(&terraform)
        .args(["fmt", "-check", "-recursive", "-diff"])
        .current_dir(root().join("terraform")));
    assert!(
        ok,
        "terraform fmt -check -recursive failed (FERRY_TERRAFORM picks another binary, e.g. tofu):\n{text}"
    );
}

#[test]
fn terraform_structure_tests_pass() {
    let (ok, text) = run(Command::new(lint_tool("python"))
        .args(["-m", "unittest", "discover", "-v", "-s", "terraform/tests"])
        .current_dir(root()));
    assert!(ok && text.contains("Ran 33 tests"), "{text}");
}

fn checkov(args: &[&str], dir: &Path) -> String {
    let (ok, text) = run(Command::new(lint_tool("checkov"))
        .args(args)
        .args(["--quiet", "--compact", "--skip-download"])
        .current_dir(dir));
    assert!(ok, "checkov found problems:\n{text}");
    text
}

#[test]
fn checkov_passes_on_terraform() {
    let text = checkov(
        &["-d", ".", "--config-file", ".checkov.yaml"],
        &root().join("terraform"),
    );
    assert!(text.contains("Failed checks: 0"), "{text}");
}

#[test]
fn checkov_passes_on_the_rendered_deploy() {
    // The base, and the variant that may write cluster-wide kinds.
    for variant in ["deploy/base", "deploy/cluster-scoped"] {
        let out = Command::new("kubectl")
            .args(["kustomize", variant])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{variant}");
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("deploy.yaml"), &out.stdout).unwrap();
        let config = root().join("deploy/.checkov.yaml");
        let text = checkov(
            &[
                "-f",
                "deploy.yaml",
                "--config-file",
                config.to_str().unwrap(),
            ],
            tmp.path(),
        );
        assert!(text.contains("Failed checks: 0"), "{variant}: {text}");
    }
}

#[test]
fn checkov_passes_on_the_rendered_cluster_addons() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("addons.yaml"),
        crate::support::render_cluster_addons(),
    )
    .unwrap();
    let config = root().join("terraform/templates/.checkov.yaml");
    let text = checkov(
        &[
            "-f",
            "addons.yaml",
            "--config-file",
            config.to_str().unwrap(),
        ],
        tmp.path(),
    );
    // Every document was read: the device plugin's own skips show.
    assert!(
        text.contains("Failed checks: 0") && text.contains("Skipped checks: 4"),
        "{text}"
    );
}

#[test]
fn checkov_passes_on_every_workflow() {
    for dir in [
        ".github/workflows",
        "platform-repo-template/.github/workflows",
        "dags-repo-template/.github/workflows",
        "terraform/.github/workflows",
    ] {
        let text = checkov(&["-d", dir, "--framework", "github_actions"], root());
        assert!(
            text.contains("Failed checks: 0") && !text.contains("Passed checks: 0,"),
            "{dir}: {text}"
        );
    }
}
