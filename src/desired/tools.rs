//! The rendering tools a Kubernetes target runs (helm, kustomize): which
//! version each binary is, or why it cannot be run, said once at start so
//! that a missing binary is named before a release or an overlay needs it.

use std::path::Path;
use std::process::Command;

/// The versions ferry is built and tested with (tools/render/build.sh).
pub const HELM_VERSION: &str = "v3.22";
pub const KUSTOMIZE_VERSION: &str = "v5.8.2";

/// One line per tool: its version, or what is wrong and what to do.
pub fn check(helm: &Path, kustomize: &Path) -> Vec<(bool, String)> {
    vec![
        probe(
            "helm",
            helm,
            &["version", "--template", "{{.Version}}"],
            HELM_VERSION,
            "Helm releases (releases/)",
            "targets.kubernetes.helm.binary",
        ),
        probe(
            "kustomize",
            kustomize,
            &["version"],
            KUSTOMIZE_VERSION,
            "kustomization directories",
            "targets.kubernetes.kustomize.binary",
        ),
    ]
}

fn probe(
    name: &str,
    binary: &Path,
    args: &[&str],
    tested: &str,
    needed_by: &str,
    key: &str,
) -> (bool, String) {
    match Command::new(binary).args(args).output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if version.starts_with(tested) {
                (true, format!("{name} {version}"))
            } else {
                (
                    true,
                    format!(
                        "{name} {version} at {} (ferry is tested with {tested}; renders may differ)",
                        binary.display()
                    ),
                )
            }
        }
        Ok(out) => (
            false,
            format!(
                "{name} at {} does not run: {}; {needed_by} will be refused until {key} names a working {name} {tested}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
        Err(e) => (
            false,
            format!(
                "{name} not found at {} ({e}); {needed_by} will be refused until {key} names {name} {tested} (ferry's image ships it; tools/render/build.sh builds it)",
                binary.display()
            ),
        ),
    }
}
