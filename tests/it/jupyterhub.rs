//! JupyterHub as the DAGs repo's IDE, as the platform template configures
//! it: the hub's configuration loads (with its settings ConfigMap as its
//! environment) and allows one GitHub team (refusing the others is
//! OAuthenticator's, not run here), has a callback URL, keeps the
//! user's token for their git and culls idle servers; the start step of a
//! user's server (`notebook-start`'s script, run as its postStart hook
//! runs it) clones the DAGs repo from a smart-HTTP git server with that
//! user's token, never writing the token to a file, and leaves the clone
//! alone at the next start; a commit pushed from that clone reaches ferry's
//! DAGs source and is published.
//!
//! Not run here: the hub itself (the hub image's JupyterHub, KubeSpawner
//! and OAuthenticator are not installed by `.ci/setup`) and a real GitHub
//! sign-in.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn hub_docs() -> Vec<Value> {
    template_manifests("jupyterhub/jupyterhub.yaml")
}

fn config_map<'a>(docs: &'a [Value], name: &str) -> &'a serde_json::Map<String, Value> {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name}"))["data"]
        .as_object()
        .unwrap()
}

#[test]
fn the_hub_config_allows_one_team_keeps_the_token_for_git_and_culls_idle_servers() {
    let docs = hub_docs();
    let settings: BTreeMap<String, String> = config_map(&docs, "hub-settings")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let hub = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "hub")
        .unwrap();
    let container = &hub["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"], "hub-settings",
        "{container}"
    );
    assert!(
        container["env"]
            .to_string()
            .contains("JUPYTERHUB_CRYPT_KEY"),
        "auth_state needs its key: {container}"
    );
    let config = config_map(&docs, "hub-config")["jupyterhub_config.py"]
        .as_str()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("jupyterhub_config.py");
    std::fs::write(&file, config).unwrap();
    // The configuration as the hub loads it, with a `c` that records what
    // it sets; then the auth_state hook called as the hub calls it.
    let script = HUB_CONFIG_RECORDER.to_string()
        + "spawner = types.SimpleNamespace(environment=dict(c.KubeSpawner.environment), user=types.SimpleNamespace(name='alice'))\n\
        c.Spawner.auth_state_hook(spawner, {'access_token': 'gho_alices-token', 'github_user': {'login': 'alice', 'id': 7, 'name': None, 'email': None}})\n\
        empty = types.SimpleNamespace(environment={}, user=spawner.user)\n\
        c.Spawner.auth_state_hook(empty, None)\n\
        out = {k: {a: b for a, b in vars(v).items() if not callable(b)} for k, v in c.__dict__.items()}\n\
        out['spawned'] = spawner.environment\n\
        out['without_auth_state'] = empty.environment\n\
        print(json.dumps(out, default=str))\n";
    let (ok, text) = crate::support::ml::output(
        Command::new("python3")
            .arg("-c")
            .arg(&script)
            .arg(&file)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .envs(&settings),
    );
    assert!(ok, "{text}");
    let c: Value = serde_json::from_str(text.trim()).unwrap();
    let github = &c["GitHubOAuthenticator"];
    assert_eq!(github["allowed_organizations"], "{'acme:data-science'}");
    assert_eq!(
        github["oauth_callback_url"],
        settings["OAUTH_CALLBACK_URL"].as_str()
    );
    assert!(
        settings["OAUTH_CALLBACK_URL"].ends_with("/hub/oauth_callback"),
        "{settings:?}"
    );
    assert_eq!(github["scope"], serde_json::json!(["read:org", "repo"]));
    assert_eq!(c["Authenticator"]["enable_auth_state"], true);
    // The user's server gets their token and name for git, and the repo.
    let env = &c["spawned"];
    assert_eq!(env["GITHUB_TOKEN"], "gho_alices-token");
    assert_eq!(env["GIT_AUTHOR_NAME"], "alice");
    assert_eq!(env["GIT_AUTHOR_EMAIL"], "7+alice@users.noreply.github.com");
    assert_eq!(env["DAGS_REPO_URL"], settings["DAGS_REPO_URL"].as_str());
    assert_eq!(env["MLFLOW_TRACKING_URI"], "http://mlflow.mlflow.svc:5000");
    assert!(c["without_auth_state"].get("GITHUB_TOKEN").is_none());
    // The start step and the published DAGs, read-only.
    let k = &c["KubeSpawner"];
    assert_eq!(
        k["lifecycle_hooks"]["postStart"]["exec"]["command"],
        serde_json::json!(["sh", "/etc/ml-platform/clone-dags-repo.sh"])
    );
    let mounts = k["volume_mounts"].to_string();
    assert!(
        mounts.contains(r#""mountPath":"/etc/ml-platform""#),
        "{mounts}"
    );
    assert!(
        mounts.contains(r#""mountPath":"/home/jovyan/dags","name":"dags","readOnly":true"#),
        "{mounts}"
    );
    // Idle servers culled by a hub service allowed to do just that.
    let services = &c["JupyterHub"]["services"];
    assert_eq!(services[0]["name"], "idle-culler", "{services}");
    assert!(
        services[0]["command"]
            .to_string()
            .contains("--timeout=3600")
    );
    let roles = &c["JupyterHub"]["load_roles"];
    assert_eq!(roles[0]["services"], serde_json::json!(["idle-culler"]));
    assert_eq!(
        roles[0]["scopes"],
        serde_json::json!([
            "list:users",
            "read:users:activity",
            "read:servers",
            "delete:servers"
        ])
    );
}

#[test]
fn a_users_server_clones_the_dags_repo_with_their_token_and_their_push_is_published() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let token = "gho_alices-token-5f2e9c";
    // The DAGs repo behind smart HTTP, which takes the user's token as
    // GitHub does (any user name, the token as password) and lets them push.
    let repo = Repo::new(root, "dags");
    repo.commit(&[("dags/a.py", Some("a = 1\n"))], "first");
    run(git(&repo.bare).args(["config", "http.receivepack", "true"]));
    let http = smart_http(root, "x-access-token", token);
    let url = format!("http://127.0.0.1:{}/git/dags.git", http.port);

    let docs = hub_docs();
    let script = config_map(&docs, "notebook-start")["clone-dags-repo.sh"]
        .as_str()
        .unwrap();
    let script_file = root.join("clone-dags-repo.sh");
    std::fs::write(&script_file, script).unwrap();
    let home = root.join("home");
    std::fs::create_dir_all(home.join("work")).unwrap();
    // What the server's environment holds (the hub's auth_state hook).
    let user_env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &home)
            .env("DAGS_REPO_URL", &url)
            .env("GITHUB_TOKEN", token)
            .env("GIT_AUTHOR_NAME", "alice")
            .env("GIT_COMMITTER_NAME", "alice")
            .env("GIT_AUTHOR_EMAIL", "7+alice@users.noreply.github.com")
            .env("GIT_COMMITTER_EMAIL", "7+alice@users.noreply.github.com")
            .env("GIT_TERMINAL_PROMPT", "0");
    };
    let start = || {
        let mut cmd = Command::new("sh");
        cmd.arg(&script_file);
        user_env(&mut cmd);
        crate::support::ml::output(&mut cmd)
    };
    let (ok, text) = start();
    assert!(ok, "{text}");
    let clone = home.join("work/dags-repo");
    assert_eq!(
        std::fs::read_to_string(clone.join("dags/a.py")).unwrap(),
        "a = 1\n"
    );
    // The token is in no file of the home or the clone.
    let mut stack = vec![home.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(token),
                    "the token is written in {}",
                    path.display()
                );
            }
        }
    }

    // The user's work: a new DAG, committed and pushed from the clone.
    std::fs::write(clone.join("dags/b.py"), "b = 2\n").unwrap();
    for args in [
        &["add", "dags/b.py"][..],
        &["commit", "-q", "-m", "b from the notebook"],
        &["push", "-q", "origin", "HEAD:main"],
    ] {
        let mut cmd = git(&clone);
        cmd.args(args);
        user_env(&mut cmd);
        let (ok, text) = crate::support::ml::output(&mut cmd);
        assert!(ok, "git {args:?}: {text}");
    }
    // The next start leaves the clone (and any unpushed work) alone.
    std::fs::write(clone.join("scratch.ipynb"), "{}").unwrap();
    let (ok, text) = start();
    assert!(ok, "{text}");
    assert!(clone.join("scratch.ipynb").exists());
    // A wrong token: the start step says so and the server starts anyway.
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("work")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(&script_file);
    user_env(&mut cmd);
    cmd.env("HOME", &elsewhere)
        .env("GITHUB_TOKEN", "gho_revoked");
    let (ok, text) = crate::support::ml::output(&mut cmd);
    assert!(ok && text.contains("cannot clone"), "{text}");

    // ferry's DAGs source, the same repo: the pushed DAG is published.
    let password = root.join("ferry-token");
    std::fs::write(&password, token).unwrap();
    let port = free_port();
    let dest = root.join("published");
    let config = root.join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            "cache_dir: {cache}\nserver:\n  listen: 127.0.0.1:{port}\n\
             sources:\n  - name: dags\n    url: {url}\n    interval: 1s\n    \
             auth:\n      username: x-access-token\n      password_file: {pw}\n\
             targets:\n  dags:\n    source: dags\n    destination: {dest}\n",
            cache = root.join("cache").display(),
            pw = password.display(),
            dest = dest.display(),
        ),
    )
    .unwrap();
    let ferry = spawn_ferry(&config, &root.join("ferry.log"), port, &[]);
    eventually(
        Duration::from_secs(30),
        "the notebook's DAG published",
        || {
            std::fs::read_to_string(dest.join("current/b.py"))
                .ok()
                .filter(|b| b == "b = 2\n")
        },
    );
    stop_ferry(ferry);
}
