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


def _model_data_lines(lines: list, endpoint: str, model_name: str):
    """(index, indent, value) of each `model_data:` line of `endpoint`'s
    variants that serve `model_name` (a line scan, so that an edit keeps
    every other byte, comments too)."""
    endpoint_indent = None
    variant_model = None
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
            value = stripped[len("model_data:") :].split("#", 1)[0].strip().strip("'\"")
            yield i, indent, value


def point_endpoint(text: str, endpoint: str, model_name: str, model_data: str) -> str:
    """platform.yaml with `model_data` of `endpoint`'s variants that serve
    `model_name` replaced; every other byte (comments too) kept."""
    lines = text.splitlines(keepends=True)
    changed = 0
    for i, indent, _ in list(_model_data_lines(lines, endpoint, model_name)):
        newline = "\n" if lines[i].endswith("\n") else ""
        lines[i] = lines[i][:indent] + f"model_data: {model_data}" + newline
        changed += 1
    if not changed:
        raise PromotionError(
            f"no variant of endpoint `{endpoint}` serving `{model_name}` with a model_data line"
        )
    return "".join(lines)


def model_data_url(bucket: str, model_name: str, version: str) -> str:
    """Where a registered version's SageMaker artifact lives: the one key the
    packaging task writes and the promotion PR names."""
    return f"s3://{bucket}/models/{model_name}/{version}/model.tar.gz"


def served_versions(text: str, endpoint: str, model_name: str) -> set:
    """The registered versions of `model_name` that `endpoint`'s variants
    serve in this platform.yaml (model_data written by `model_data_url`)."""
    pattern = re.compile(rf"^s3://[^/]+/models/{re.escape(model_name)}/(\d+)/model\.tar\.gz$")
    found = set()
    for _, _, value in _model_data_lines(text.splitlines(keepends=True), endpoint, model_name):
        m = pattern.match(value)
        if m:
            found.add(m.group(1))
    return found


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


def file_at(gh: GitHub, repo: str, path: str, ref: str) -> str:
    current = gh.call("GET", f"/repos/{repo}/contents/{path}?ref={ref}")
    return base64.b64decode(current["content"]).decode()


def deployed_commit(gh: GitHub, repo: str, environment: str, look_back: int = 30) -> str | None:
    """The commit of the platform repo that ferry last deployed with success
    to `environment`: the newest deployment whose latest status is
    `success`. A newer one that failed is passed over, since a failed
    deployment keeps (or rolls back to) what served before it; one still
    running is passed over too. None when none of the newest `look_back`
    succeeded."""
    deployments = gh.call(
        "GET", f"/repos/{repo}/deployments?environment={environment}&per_page={look_back}"
    )
    for d in deployments or []:  # newest first
        statuses = gh.call("GET", f"/repos/{repo}/deployments/{d['id']}/statuses?per_page=1")
        if statuses and statuses[0]["state"] == "success":
            return d["sha"]
    return None


def promotion_branch(model_name: str, version: str) -> str:
    return f"promote/{model_name}-v{version}"


def pull_request(gh: GitHub, repo: str, branch: str) -> dict | None:
    """The newest pull request from `branch` (open or closed), or None."""
    owner = repo.split("/")[0]
    found = gh.call("GET", f"/repos/{repo}/pulls?state=all&head={owner}:{branch}")
    return found[0] if found else None


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
        # The GitHub environment ferry reports its deployments to
        # (`github.environment` of ferry.yaml).
        "environment": os.environ.get("PLATFORM_ENVIRONMENT", "production"),
        "bucket": os.environ["MODEL_ARTIFACT_BUCKET"],
    }
