"""moto server, plus the operations ferry needs that moto 5.2.5 lacks.

    python tools/moto/ferry_moto.py [--host 127.0.0.1] [--port 5000] [--owner-pid PID]

moto answers 404 for the EKS addon and version-update operations and 500
for SageMaker UpdateEndpoint. This launcher registers them on moto's own
backends before starting the ordinary moto server, so requests are parsed
and responses serialized by moto from botocore's service models (the AWS
API reference shapes), exactly as for the operations moto ships:

EKS      CreateAddon, DescribeAddon, UpdateAddon, ListAddons, DeleteAddon,
         UpdateNodegroupVersion, DescribeUpdate (UpdateNodegroupConfig's
         updates are recorded so DescribeUpdate can follow them). As on a
         real new cluster, vpc-cni, kube-proxy and coredns run self-managed:
         creating one as an addon without `resolveConflicts: OVERWRITE`
         ends CREATE_FAILED with a ConfigurationConflict health issue.
         `serviceAccountRoleArn` is kept and described; UpdateAddon records
         ServiceAccountRoleArn and ResolveConflicts among its params.
SageMaker UpdateEndpoint; endpoints report `Creating`/`Updating` on the
         first DescribeEndpoint after a change, as the real service does
         while it deploys. While an update deploys, `EndpointConfigName`
         stays the serving config and `PendingDeploymentSummary` names the
         one being deployed; the switch happens when it settles.
         `RetainAllVariantProperties` keeps same-named variants' live
         instance counts (and weights and data capture, unless listed in
         `ExcludeRetainedVariantProperties`). As SageMaker does, an update
         that changes the instance type of a variant registered with
         Application Auto Scaling, or removes such a variant, is refused.

Test conveniences, documented here because they are not AWS behaviour:
- A container image whose tag is `:broken` makes the deployment fail: a new
  endpoint ends `Failed`, an updated one rolls back to its previous config
  (`InService`, old config) with a `FailureReason`, as SageMaker does.
- `POST /ferry-test/throttle?count=N` makes the next N AWS requests answer
  `ThrottlingException` (HTTP 400); `GET /ferry-test/throttle` returns how
  many are left. `POST /moto-api/reset` (moto's own) clears all state.
- `POST /ferry-test/hold?on=1` keeps every deploying endpoint in its
  transitional state until `POST /ferry-test/hold?on=0` (a slow deployment,
  to interrupt the caller mid-way).
- `GET /ferry-test/calls` counts the JSON-protocol calls by `X-Amz-Target`
  (`SageMaker.UpdateEndpoint`: N) since the last reset.
- `POST /ferry-test/serve` with `{"python": PATH}`: endpoints serve their
  MLflow models for real (see "model serving" below).
"""

import argparse
import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone

from moto.eks import urls as eks_urls
from moto.eks.exceptions import InvalidParameterException, ResourceNotFoundException
from moto.eks.models import EKSBackend
from moto.eks.responses import EKSResponse
from moto.core.responses import ActionResult, EmptyResult
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import FakeEndpoint, SageMakerModelBackend
from moto.sagemaker.responses import SageMakerResponse
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response


def now():
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- EKS ----

def _cluster(backend, name):
    cluster = backend.clusters.get(name)
    if cluster is None:
        raise ResourceNotFoundException(
            clusterName=name, nodegroupName=None, fargateProfileName=None, addonName=None,
            message=f"No cluster found for name: {name}.",
        )
    return cluster


def _nodegroup(backend, cluster_name, nodegroup_name):
    nodegroup = _cluster(backend, cluster_name).nodegroups.get(nodegroup_name)
    if nodegroup is None:
        raise ResourceNotFoundException(
            clusterName=cluster_name, nodegroupName=nodegroup_name, fargateProfileName=None,
            addonName=None, message=f"No node group found for name: {nodegroup_name}.",
        )
    return nodegroup


def _addons(backend, cluster_name):
    _cluster(backend, cluster_name)
    return backend.__dict__.setdefault("ferry_addons", {}).setdefault(cluster_name, {})


def _record_update(backend, cluster_name, update, nodegroup=None, addon=None):
    updates = backend.__dict__.setdefault("ferry_updates", {})
    updates[(cluster_name, update["id"])] = dict(update, _nodegroup=nodegroup, _addon=addon)
    return update


def _new_update(kind, params):
    return {
        "id": str(uuid.uuid4()), "status": "Successful", "type": kind,
        "params": [{"type": k, "value": v} for k, v in params], "createdAt": now(), "errors": [],
    }


# What every EKS cluster runs before any addon is created, and the object
# whose fields then conflict.
SELF_MANAGED = {
    "vpc-cni": "DaemonSet.apps aws-node",
    "kube-proxy": "DaemonSet.apps kube-proxy",
    "coredns": "Deployment.apps coredns",
}


def _addon_view(cluster_name, addon):
    view = {
        "addonName": addon["name"], "clusterName": cluster_name, "status": addon["status"],
        "addonVersion": addon["version"], "health": {"issues": addon.get("issues") or []},
        "addonArn": f"arn:aws:eks:us-east-1:123456789012:addon/{cluster_name}/{addon['name']}/{addon['id']}",
        "createdAt": addon["created"], "modifiedAt": addon["modified"],
        "configurationValues": addon.get("configuration") or "",
        "tags": addon.get("tags") or {},
    }
    if addon.get("role"):
        view["serviceAccountRoleArn"] = addon["role"]
    return view


_original_update_config = EKSBackend.update_nodegroup_config


def update_nodegroup_config(self, cluster_name, nodegroup_name, **kwargs):
    update = _original_update_config(self, cluster_name, nodegroup_name, **kwargs)
    return _record_update(self, cluster_name, update, nodegroup=nodegroup_name)


def update_nodegroup_version(self, cluster_name, nodegroup_name, version, release_version):
    nodegroup = _nodegroup(self, cluster_name, nodegroup_name)
    params = []
    if version:
        nodegroup.version = version
        params.append(("Version", version))
    if release_version:
        nodegroup.release_version = release_version
        params.append(("ReleaseVersion", release_version))
    nodegroup.modified_at = now()
    update = _new_update("VersionUpdate", params)
    return _record_update(self, cluster_name, update, nodegroup=nodegroup_name)


def create_addon(self, cluster_name, name, version, configuration, tags, role=None, resolve=None):
    addons = _addons(self, cluster_name)
    if name in addons:
        raise InvalidParameterException(
            clusterName=cluster_name, nodegroupName=None, fargateProfileName=None, addonName=name,
            message=f"Addon {name} already exists.",
        )
    if configuration:
        try:
            json.loads(configuration)
        except ValueError:
            raise InvalidParameterException(
                clusterName=cluster_name, nodegroupName=None, fargateProfileName=None,
                addonName=name, message="configurationValues is not valid JSON",
            )
    status, issues = "ACTIVE", []
    if name in SELF_MANAGED and resolve != "OVERWRITE":
        status = "CREATE_FAILED"
        issues = [{
            "code": "ConfigurationConflict",
            "message": "Conflicts found when trying to apply. Will not continue due to resolve conflicts mode. "
                       f"Conflicts:\n{SELF_MANAGED[name]} - .spec.template.spec.containers[0].image",
            "resourceIds": [],
        }]
    addons[name] = {
        "name": name, "version": version or "v1.0.0-eksbuild.1", "configuration": configuration,
        "tags": tags, "status": status, "issues": issues, "role": role,
        "id": str(uuid.uuid4()), "created": now(), "modified": now(),
    }
    return _addon_view(cluster_name, addons[name])


def _addon(self, cluster_name, name):
    addon = _addons(self, cluster_name).get(name)
    if addon is None:
        raise ResourceNotFoundException(
            clusterName=cluster_name, nodegroupName=None, fargateProfileName=None, addonName=name,
            message=f"No addon: {name} found in cluster: {cluster_name}",
        )
    return addon


def update_addon(self, cluster_name, name, version, configuration, role=None, resolve=None):
    addon = _addon(self, cluster_name, name)
    params = []
    if role:
        addon["role"] = role
        params.append(("ServiceAccountRoleArn", role))
    if resolve:
        params.append(("ResolveConflicts", resolve))
    if version:
        addon["version"] = version
        params.append(("AddonVersion", version))
    if configuration is not None:
        addon["configuration"] = configuration
        params.append(("ConfigurationValues", configuration))
    addon["modified"] = now()
    update = _new_update("AddonUpdate", params)
    return _record_update(self, cluster_name, update, addon=name)


def describe_update(self, cluster_name, update_id, nodegroup_name, addon_name):
    _cluster(self, cluster_name)
    update = self.__dict__.get("ferry_updates", {}).get((cluster_name, update_id))
    if update is None or update["_nodegroup"] != nodegroup_name or update["_addon"] != addon_name:
        raise ResourceNotFoundException(
            clusterName=cluster_name, nodegroupName=nodegroup_name, fargateProfileName=None,
            addonName=addon_name, message=f"No update found for ID: {update_id}",
        )
    return {k: v for k, v in update.items() if not k.startswith("_")}


for fn in (update_nodegroup_config, update_nodegroup_version, create_addon, update_addon, describe_update):
    setattr(EKSBackend, fn.__name__, fn)
EKSBackend.describe_addon = lambda self, c, n: _addon_view(c, _addon(self, c, n))
EKSBackend.delete_addon = lambda self, c, n: _addon_view(c, _addons(self, c).pop(_addon(self, c, n)["name"]))


def _r_update_nodegroup_version(self):
    update = self.eks_backend.update_nodegroup_version(
        self._get_param("name"), self._get_param("nodegroupName"),
        self._get_param("version"), self._get_param("releaseVersion"),
    )
    return ActionResult({"update": update})


def _r_create_addon(self):
    addon = self.eks_backend.create_addon(
        self._get_param("name"), self._get_param("addonName"), self._get_param("addonVersion"),
        self._get_param("configurationValues"), self._get_param("tags"),
        self._get_param("serviceAccountRoleArn"), self._get_param("resolveConflicts"),
    )
    return ActionResult({"addon": addon})


def _r_describe_addon(self):
    return ActionResult({"addon": self.eks_backend.describe_addon(self._get_param("name"), self._get_param("addonName"))})


def _r_delete_addon(self):
    return ActionResult({"addon": self.eks_backend.delete_addon(self._get_param("name"), self._get_param("addonName"))})


def _r_list_addons(self):
    return ActionResult({"addons": sorted(_addons(self.eks_backend, self._get_param("name")))})


def _r_update_addon(self):
    update = self.eks_backend.update_addon(
        self._get_param("name"), self._get_param("addonName"), self._get_param("addonVersion"),
        self._get_param("configurationValues"),
        self._get_param("serviceAccountRoleArn"), self._get_param("resolveConflicts"),
    )
    return ActionResult({"update": update})


def _r_describe_update(self):
    update = self.eks_backend.describe_update(
        self._get_param("name"), self._get_param("updateId"),
        self._get_param("nodegroupName"), self._get_param("addonName"),
    )
    return ActionResult({"update": update})


EKSResponse.update_nodegroup_version = _r_update_nodegroup_version
EKSResponse.create_addon = _r_create_addon
EKSResponse.describe_addon = _r_describe_addon
EKSResponse.delete_addon = _r_delete_addon
EKSResponse.list_addons = _r_list_addons
EKSResponse.update_addon = _r_update_addon
EKSResponse.describe_update = _r_describe_update

eks_urls.url_paths.update({
    "{0}/clusters/(?P<name>[^/]+)/node-groups/(?P<nodegroupName>[^/]+)/update-version$": eks_urls.response.dispatch,
    "{0}/clusters/(?P<name>[^/]+)/addons$": eks_urls.response.dispatch,
    "{0}/clusters/(?P<name>[^/]+)/addons/(?P<addonName>[^/]+)$": eks_urls.response.dispatch,
    "{0}/clusters/(?P<name>[^/]+)/addons/(?P<addonName>[^/]+)/update$": eks_urls.response.dispatch,
    "{0}/clusters/(?P<name>[^/]+)/updates/(?P<updateId>[^/]+)$": eks_urls.response.dispatch,
})

# ---------------------------------------------------------- SageMaker ----

def _broken(backend, config_name):
    config = backend.endpoint_configs[config_name]
    for variant in config.production_variants:
        model = backend._models.get(variant["ModelName"])
        image = (model.primary_container or {}).get("Image", "") if model else ""
        if image.endswith(":broken"):
            return f"The primary container for production variant {variant['VariantName']} did not pass the ping health check ({image})."
        if SERVE["python"]:
            try:
                _unpacked(backend.account_id, (model.primary_container or {}).get("ModelDataUrl", ""))
            except _ArtifactError as e:
                return f"{e} (production variant {variant['VariantName']})"
    return None


# ------------------------------------------------------ model serving ----
# With `POST /ferry-test/serve` ({"python": PATH}), endpoints serve their
# models for real: a deployment needs each variant's ModelDataUrl in moto's
# S3 as a model.tar.gz with MLmodel at its root (SageMaker fails the
# deployment otherwise, as MLflow's serving container would not start), and
# InvokeEndpoint answers through MLflow's own scoring code
# (mlflow.pyfunc.scoring_server.invocations, what the serving container runs)
# in PATH's Python, with the model unpacked from that archive. Off after
# /moto-api/reset.

SERVE = {"python": None}

_SCORE = """
import sys
import mlflow.pyfunc
from mlflow.pyfunc import scoring_server
model = mlflow.pyfunc.load_model(sys.argv[1])
r = scoring_server.invocations(sys.stdin.read(), sys.argv[2], model, None)
sys.stdout.write(r.response)
sys.exit(0 if r.status == 200 else 3)
"""


class _ArtifactError(Exception):
    pass


_UNPACKED = {}


def _unpacked(account_id, url):
    """The directory `url`'s model.tar.gz unpacks to (cached by its ETag)."""
    import io
    import tarfile
    import tempfile
    from moto.s3.models import s3_backends

    if not url.startswith("s3://") or "/" not in url[5:]:
        raise _ArtifactError(f"Could not find model data at {url!r}.")
    bucket, key = url[5:].split("/", 1)
    try:
        obj = s3_backends[account_id]["aws"].get_object(bucket, key)
    except Exception:  # noqa: BLE001 - moto raises a bucket or key error
        obj = None
    if obj is None:
        raise _ArtifactError(
            f"Failed to download model data(bucket: {bucket}, key: {key}). Please ensure that there is an "
            "object located at the URL and that the role passed to CreateModel has permissions to download the object."
        )
    cached = _UNPACKED.get((url, obj.etag))
    if cached:
        return cached
    target = tempfile.mkdtemp(prefix="ferry-moto-model-")
    try:
        with tarfile.open(fileobj=io.BytesIO(obj.value), mode="r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _ArtifactError(f"Failed to extract model data archive from URL {url}: {e}") from None
    if not os.path.isfile(os.path.join(target, "MLmodel")):
        raise _ArtifactError(f"{url} holds no MLmodel at its root: the serving container cannot load it")
    _UNPACKED[(url, obj.etag)] = target
    return target


def _error(status, kind, message, **extra):
    # moto takes a handler's status from its headers.
    headers = {"status": status, "Content-Type": "application/json", "x-amzn-ErrorType": kind}
    return status, headers, json.dumps({"message": message, **extra})


def _model_error(message):
    return _error(424, "ModelError", message, ErrorCode="CLIENT_ERROR_FROM_MODEL", OriginalStatusCode=400)


from moto.sagemaker.models import sagemaker_backends  # noqa: E402
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse  # noqa: E402

_original_invoke_endpoint = SageMakerRuntimeResponse.invoke_endpoint


def _invoke_endpoint(self):
    if not SERVE["python"]:
        return _original_invoke_endpoint(self)
    import subprocess

    from urllib.parse import unquote

    name = unquote(self.path.split("/")[2])  # /endpoints/{EndpointName}/invocations
    backend = sagemaker_backends[self.current_account][self.region]
    endpoint = backend.endpoints.get(name)
    if endpoint is None or endpoint.endpoint_status == "Creating":
        return _error(400, "ValidationError", f"Endpoint {name} of account {self.current_account} not found.")
    variants = backend.endpoint_configs[endpoint.endpoint_config_name].production_variants
    wanted = self.headers.get("X-Amzn-SageMaker-Target-Variant")
    variant = next((v for v in variants if v["VariantName"] == wanted), None) if wanted else variants[0]
    if variant is None:
        return _error(400, "ValidationError", f"Variant {wanted} not found for endpoint {name}.")
    model = backend._models[variant["ModelName"]]
    try:
        directory = _unpacked(self.current_account, (model.primary_container or {}).get("ModelDataUrl", ""))
    except _ArtifactError as e:
        return _model_error(str(e))
    content_type = self.headers.get("Content-Type", "application/json")
    run = subprocess.run(
        [SERVE["python"], "-c", _SCORE, directory, content_type],
        input=self.body if isinstance(self.body, str) else self.body.decode(),
        capture_output=True, text=True, timeout=300,
    )
    if run.returncode != 0:
        detail = (run.stdout or run.stderr).strip()[-600:]
        return _model_error(f"Received client error (400) from {variant['VariantName']} with message \"{detail}\".")
    headers = {"Content-Type": "application/json", "x-Amzn-Invoked-Production-Variant": variant["VariantName"]}
    return 200, headers, run.stdout


SageMakerRuntimeResponse.invoke_endpoint = _invoke_endpoint


_original_create_endpoint = SageMakerModelBackend.create_endpoint


def create_endpoint(self, endpoint_name, endpoint_config_name, tags):
    endpoint = _original_create_endpoint(self, endpoint_name, endpoint_config_name, tags)
    reason = _broken(self, endpoint_config_name)
    endpoint.ferry_settle = ("Creating", "Failed" if reason else "InService", reason)
    endpoint.endpoint_status = "Creating"
    return endpoint


def _autoscaled(backend, endpoint_name):
    """Variants of the endpoint registered as scalable targets."""
    from moto.applicationautoscaling.models import applicationautoscaling_backends
    scaling = applicationautoscaling_backends[backend.account_id][backend.region_name]
    targets = scaling.targets.get("sagemaker:variant:DesiredInstanceCount", {})
    prefix = f"endpoint/{endpoint_name}/variant/"
    return {r[len(prefix):] for r in targets if r.startswith(prefix)}


def _instance_types(backend, config_name):
    return {
        v["VariantName"]: v.get("InstanceType")
        for v in backend.endpoint_configs[config_name].production_variants
    }


def update_endpoint(self, endpoint_name, endpoint_config_name, retain_variant_properties=False,
                    exclude_retained=()):
    endpoint = self.endpoints.get(endpoint_name)
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint '{FakeEndpoint.arn_formatter(endpoint_name, self.account_id, self.region_name)}'.")
    if endpoint.endpoint_status not in ("InService", "Failed"):
        raise ValidationError(message=f"Cannot update in-progress endpoint '{endpoint.arn}'.")
    if endpoint_config_name not in self.endpoint_configs:
        raise ValidationError(message=f"Could not find endpoint configuration '{endpoint_config_name}'.")
    old = _instance_types(self, endpoint.endpoint_config_name)
    new = _instance_types(self, endpoint_config_name)
    for variant in sorted(_autoscaled(self, endpoint_name)):
        if variant in old and new.get(variant) != old[variant]:
            raise ValidationError(message=(
                f"The variant {variant} of endpoint {endpoint_name} is registered with Application Auto Scaling: "
                "deregister it before changing its instance type or removing it."
            ))
    reason = _broken(self, endpoint_config_name)
    endpoint.ferry_retain = (
        set() if not retain_variant_properties
        else {"DesiredInstanceCount", "DesiredWeight", "DataCaptureConfig"} - set(exclude_retained)
    )
    endpoint.last_modified_time = now()
    # The old config serves until the new one settles; a failed update
    # rolls back to it.
    endpoint.ferry_pending = (endpoint_config_name, now())
    endpoint.ferry_settle = ("Updating", "InService", reason)
    endpoint.endpoint_status = "Updating"
    return endpoint


def _switch(backend, endpoint):
    """A pending update that succeeded: its config now serves."""
    pending = getattr(endpoint, "ferry_pending", None)
    endpoint.ferry_pending = None
    if pending is None:
        return
    config = backend.endpoint_configs[pending[0]]
    retain = getattr(endpoint, "ferry_retain", set())
    before = {v["VariantName"]: v for v in endpoint.production_variants}
    endpoint.endpoint_config_name = pending[0]
    variants = endpoint._process_production_variants(config.production_variants)
    for variant in variants:
        live = before.get(variant["VariantName"])
        if live is None:
            continue
        if "DesiredInstanceCount" in retain:
            for key in ("CurrentInstanceCount", "DesiredInstanceCount"):
                if key in live:
                    variant[key] = live[key]
        if "DesiredWeight" in retain:
            for key in ("CurrentWeight", "DesiredWeight"):
                if key in live:
                    variant[key] = live[key]
    endpoint.production_variants = variants
    if "DataCaptureConfig" not in retain:
        endpoint.data_capture_config = config.data_capture_config
    endpoint.failure_reason = None


HOLD = {"on": False}


_original_describe_endpoint = SageMakerModelBackend.describe_endpoint


def describe_endpoint(self, endpoint_name):
    endpoint = self.endpoints.get(endpoint_name)
    settle = getattr(endpoint, "ferry_settle", None)
    if endpoint is not None and settle is not None:
        transitional, final, reason = settle
        if endpoint.endpoint_status == transitional:
            response = dict(_original_describe_endpoint(self, endpoint_name))
            pending = getattr(endpoint, "ferry_pending", None)
            if pending is not None:
                response["PendingDeploymentSummary"] = {
                    "EndpointConfigName": pending[0],
                    "StartTime": pending[1],
                }
            if not HOLD["on"]:
                endpoint.endpoint_status = final
                endpoint.failure_reason = reason
                if reason is None:
                    _switch(self, endpoint)
                else:
                    endpoint.ferry_pending = None
            return response
        endpoint.ferry_settle = None
    return _original_describe_endpoint(self, endpoint_name)


SageMakerModelBackend.create_endpoint = create_endpoint
SageMakerModelBackend.update_endpoint = update_endpoint
SageMakerModelBackend.describe_endpoint = describe_endpoint


def _r_update_endpoint(self):
    endpoint = self.sagemaker_backend.update_endpoint(
        self._get_param("EndpointName"), self._get_param("EndpointConfigName"),
        self._get_param("RetainAllVariantProperties", False),
        [p.get("VariantPropertyType") for p in self._get_param("ExcludeRetainedVariantProperties", [])],
    )
    return ActionResult({"EndpointArn": endpoint.arn})


SageMakerResponse.update_endpoint = _r_update_endpoint

# ------------------------------------------------------------- server ----

class Throttle:
    """WSGI middleware for the test hooks: throttling, holding deployments,
    counting calls."""

    def __init__(self, app):
        self.app = app
        self.left = 0
        self.calls = {}
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.path == "/moto-api/reset":
            with self.lock:
                self.calls = {}
            HOLD["on"] = False
            SERVE["python"] = None
        if request.path == "/ferry-test/serve":
            SERVE["python"] = json.loads(request.get_data() or b"{}").get("python")
            return Response(json.dumps(SERVE), mimetype="application/json")(environ, start_response)
        if request.path == "/ferry-test/hold":
            HOLD["on"] = request.args.get("on", "1") == "1"
            return Response(json.dumps(HOLD), mimetype="application/json")(environ, start_response)
        if request.path == "/ferry-test/calls":
            with self.lock:
                body = json.dumps(self.calls)
            return Response(body, mimetype="application/json")(environ, start_response)
        target = request.headers.get("X-Amz-Target")
        if target:
            with self.lock:
                self.calls[target] = self.calls.get(target, 0) + 1
        if request.path == "/ferry-test/throttle":
            with self.lock:
                if request.method == "POST":
                    self.left = int(request.args.get("count", "1"))
                body = json.dumps({"left": self.left})
            return Response(body, mimetype="application/json")(environ, start_response)
        if not request.path.startswith("/moto-api"):
            with self.lock:
                throttle = self.left > 0
                if throttle:
                    self.left -= 1
            if throttle:
                body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
                response = Response(body, status=400, mimetype="application/x-amz-json-1.1")
                response.headers["x-amzn-ErrorType"] = "ThrottlingException"
                return response(environ, start_response)
        return self.app(environ, start_response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--owner-pid", type=int, help="exit when this process is gone (test harness)")
    args = parser.parse_args()
    if args.owner_pid:
        def watch():
            while True:
                try:
                    os.kill(args.owner_pid, 0)
                except OSError:
                    os._exit(0)
                time.sleep(1)
        threading.Thread(target=watch, daemon=True).start()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, Throttle(app), threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
