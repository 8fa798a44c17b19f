//! Records the commit ferry is built from, for `ferry --version`, the
//! status API and `ferry_build_info`. `FERRY_GIT_COMMIT` overrides it (image
//! builds without `.git`); without either it is `unknown`.

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_GIT_COMMIT");
    let commit = std::env::var("FERRY_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FERRY_GIT_COMMIT={commit}");
    // Rebuild the constant when HEAD moves, not on every build.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        println!("cargo:rerun-if-changed=.git/HEAD");
        // A path that does not exist would rerun this on every build.
        let loose = head
            .strip_prefix("ref: ")
            .map(|r| format!(".git/{}", r.trim()))
            .filter(|p| std::path::Path::new(p).exists());
        match loose {
            Some(path) => println!("cargo:rerun-if-changed={path}"),
            None if std::path::Path::new(".git/packed-refs").exists() => {
                println!("cargo:rerun-if-changed=.git/packed-refs")
            }
            None => {}
        }
    }
}
