"""The GitOps promotion path: a pull request on the platform repo that
points the SageMaker endpoint at the new model version. ferry previews the
PR (what the endpoint change will do) and deploys it on merge; nothing here
touches AWS.

Only the standard library: it runs inside an Airflow task.
"""

import base64
import json
import os
import re
import urllib.error
import urllib.request


class PromotionError(RuntimeError):
    pass


def point_endpoint(text: str, endpoint: str, model_name: str, model_data: str) -> str:
    """platform.yaml with `model_data` of `endpoint`'s variants that serve
    `model_name` replaced; every other byte (comments too) kept."""
    lines = text.splitlines(keepends=True)
    endpoint_indent = None
    variant_model = None
    changed = 0
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if not stripped.strip() or stripped.startswith("#"):
            continue
        if endpoint_indent is not None and indent <= endpoint_indent:
            endpoint_indent = None  # the endpoint's block ended
        item = re.match(r"- name:\s*['\"]?([\w.-]+)", stripped)
        if item and endpoint_indent is None and item.group(1) == endpoint:
            endpoint_indent = indent
            variant_model = None
            continue
        if endpoint_indent is None:
            continue
        if stripped.startswith("- "):
            variant_model = None
            stripped = stripped[2:].lstrip()
            indent = len(line) - len(stripped)
        m = re.match(r"model_name:\s*['\"]?([\w.-]+)", stripped)
        if m:
            variant_model = m.group(1)
        elif stripped.startswith("model_data:") and variant_model == model_name:
            newline = "\n" if line.endswith("\n") else ""
            lines[i] = line[:indent] + f"model_data: {model_data}" + newline
            changed += 1
    if not changed:
        raise PromotionError(
            f"no variant of endpoint `{endpoint}` serving `{model_name}` with a model_data line"
        )
    return "".join(lines)


class GitHub:
    def __init__(self, token: str, api: str = "https://api.github.com"):
        self.token = token
        self.api = api.rstrip("/")

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/vnd.github+json")
        request.add_header("X-GitHub-Api-Version", "2022-11-28")
        request.add_header("User-Agent", "ml-platform-dags")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise PromotionError(f"{method} {path}: HTTP {e.code}: {detail}") from None


def open_pull_request(
    gh: GitHub, repo: str, base: str, path: str, branch: str, title: str, body: str, edit
) -> dict | None:
    """Branch `branch` from `base`, commit `edit(file)` to it, open a PR.
    None when the edit changes nothing. A rerun (task retry) that finds its
    branch already there returns the PR it opened before."""
    base_sha = gh.call("GET", f"/repos/{repo}/git/ref/heads/{base}")["object"]["sha"]
    current = gh.call("GET", f"/repos/{repo}/contents/{path}?ref={base}")
    old = base64.b64decode(current["content"]).decode()
    new = edit(old)
    if new == old:
        return None
    try:
        gh.call("POST", f"/repos/{repo}/git/refs", {"ref": f"refs/heads/{branch}", "sha": base_sha})
    except PromotionError as e:
        if "HTTP 422" not in str(e):
            raise
        owner = repo.split("/")[0]
        existing = gh.call("GET", f"/repos/{repo}/pulls?state=open&head={owner}:{branch}")
        if existing:
            return existing[0]
        raise
    gh.call(
        "PUT",
        f"/repos/{repo}/contents/{path}",
        {
            "message": title,
            "content": base64.b64encode(new.encode()).decode(),
            "sha": current["sha"],
            "branch": branch,
        },
    )
    return gh.call(
        "POST",
        f"/repos/{repo}/pulls",
        {"title": title, "head": branch, "base": base, "body": body},
    )


def settings() -> dict:
    """From the environment (the Airflow deployment sets these)."""
    missing = [k for k in ("GITHUB_TOKEN", "PLATFORM_REPO", "MODEL_ARTIFACT_BUCKET") if not os.environ.get(k)]
    if missing:
        raise PromotionError(f"set {', '.join(missing)} to open promotion pull requests")
    return {
        "token": os.environ["GITHUB_TOKEN"],
        "api": os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        "repo": os.environ["PLATFORM_REPO"],
        "base": os.environ.get("PLATFORM_BRANCH", "main"),
        "bucket": os.environ["MODEL_ARTIFACT_BUCKET"],
    }
