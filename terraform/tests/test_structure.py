"""Structure of terraform/, read with python-hcl2 (no provider download):
encrypted, private buckets; no wildcard IAM; nodegroup sizes Terraform and
ferry can both live with; every variable and output described."""

import ast
import glob
import os
import unittest

import hcl2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tf_files():
    return sorted(glob.glob(os.path.join(ROOT, "**", "*.tf"), recursive=True))


def load(path):
    with open(path) as f:
        return hcl2.load(f)


def blocks(kind):
    """(file, block) for every top-level block of `kind` in every file."""
    for path in tf_files():
        for block in load(path).get(kind, []):
            yield os.path.relpath(path, ROOT), block


def resources(rtype):
    for path, block in blocks("resource"):
        for name, body in block.get(rtype, {}).items():
            yield path, name, body


def policies():
    """Every jsonencode(...) policy document in the code, as Python values."""
    def walk(value):
        if isinstance(value, str) and value.startswith("${jsonencode(") and value.endswith(")}"):
            try:
                yield ast.literal_eval(value[len("${jsonencode("):-2])
            except (ValueError, SyntaxError):
                pass
        elif isinstance(value, dict):
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)

    for path in tf_files():
        for doc in walk(load(path)):
            if isinstance(doc, dict) and "Statement" in doc:
                yield os.path.relpath(path, ROOT), doc


def as_list(value):
    return value if isinstance(value, list) else [value]


class Buckets(unittest.TestCase):
    def test_every_bucket_is_encrypted_versioned_and_private(self):
        buckets = {(p, n) for p, n, _ in resources("aws_s3_bucket")}
        self.assertGreaterEqual(len(buckets), 2)
        for companion in (
            "aws_s3_bucket_server_side_encryption_configuration",
            "aws_s3_bucket_public_access_block",
            "aws_s3_bucket_versioning",
        ):
            covered = {(p, b["bucket"][0].split(".")[1]) for p, _, b in resources(companion) if b["bucket"][0].startswith("${aws_s3_bucket.")}
            self.assertEqual(buckets, covered, f"{companion} missing for {buckets - covered}")
        for path, name, body in resources("aws_s3_bucket_public_access_block"):
            for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
                self.assertEqual(body[flag], [True], f"{path}: {name}.{flag}")
        for path, name, body in resources("aws_s3_bucket_server_side_encryption_configuration"):
            algorithm = body["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"][0]
            self.assertIn(algorithm, ("aws:kms", "AES256"), f"{path}: {name}")


class Iam(unittest.TestCase):
    def test_no_statement_grants_every_action_on_every_resource(self):
        documents = list(policies())
        self.assertGreaterEqual(len(documents), 6, "policies were found")
        for path, doc in documents:
            for st in as_list(doc["Statement"]):
                if not isinstance(st, dict) or st.get("Effect") != "Allow":
                    continue
                actions = as_list(st.get("Action", []))
                resources_ = as_list(st.get("Resource", []))
                self.assertFalse(
                    "*" in actions and "*" in resources_,
                    f"{path}: statement {st.get('Sid', '')} allows * on *",
                )
                self.assertNotIn("iam:*", actions, f"{path}: {st.get('Sid', '')}")

    def test_ferry_may_pass_only_the_sagemaker_execution_role(self):
        docs = [d for p, d in policies() if p == "iam.tf"]
        passes = [s for d in docs for s in as_list(d["Statement"]) if isinstance(s, dict) and "iam:PassRole" in as_list(s.get("Action"))]
        self.assertEqual(len(passes), 1)
        self.assertEqual(passes[0]["Resource"], "${aws_iam_role.sagemaker_execution.arn}")
        self.assertEqual(passes[0]["Condition"]["StringEquals"]["iam:PassedToService"], "sagemaker.amazonaws.com")


class Nodegroups(unittest.TestCase):
    def test_default_sizes_are_consistent_and_system_exists(self):
        variable = [b["nodegroups"] for p, b in blocks("variable") if p == "variables.tf" and "nodegroups" in b][0]
        groups = variable["default"][0] if isinstance(variable["default"], list) else variable["default"]
        self.assertIn("system", groups)
        self.assertIn("cpu-training", groups)
        for name, ng in groups.items():
            self.assertTrue(0 <= ng["min_size"] <= ng["desired_size"] <= ng["max_size"], name)
        self.assertTrue(groups["cpu-training"]["taints"], "the training nodegroup is tainted")

    def test_default_nodegroups_are_those_the_platform_template_declares(self):
        # Terraform creates the nodegroups; ferry then manages them from
        # platform.yaml, and the stand-up test sizes its simulated nodes
        # from it: the two must describe the same machines.
        import yaml
        with open(os.path.join(ROOT, "..", "platform-repo-template", "platform.yaml")) as f:
            declared = {g["name"]: g for g in yaml.safe_load(f)["eks"]["nodegroups"]}
        variable = [b["nodegroups"] for p, b in blocks("variable") if p == "variables.tf" and "nodegroups" in b][0]
        groups = variable["default"][0] if isinstance(variable["default"], list) else variable["default"]
        self.assertEqual(sorted(groups), sorted(declared))
        effects = {"NO_SCHEDULE", "NO_EXECUTE", "PREFER_NO_SCHEDULE"}
        for name, ng in groups.items():
            g = declared[name]
            self.assertEqual(ng["instance_types"], g["instance_types"], name)
            self.assertEqual(
                (ng["min_size"], ng["max_size"]),
                (g["scaling"]["min"], g["scaling"]["max"]),
                name,
            )
            # The autoscaler sizes each group: a `desired` in platform.yaml
            # would have ferry undo it at every sync.
            self.assertNotIn("desired", g["scaling"], name)
            self.assertEqual(ng["desired_size"], ng["min_size"], f"{name} starts at its minimum")
            self.assertEqual(ng["labels"], g.get("labels", {}), name)
            taints = [{k: t.get(k, "") for k in ("key", "value", "effect")} for t in g.get("taints", [])]
            self.assertEqual(ng["taints"], taints, name)
            self.assertTrue(all(t["effect"] in effects for t in taints), name)

    def test_terraform_leaves_scaling_to_ferry(self):
        (_, _, body), = [r for r in resources("aws_eks_node_group")]
        ignored = body["lifecycle"][0]["ignore_changes"][0]
        self.assertIn("${scaling_config[0].desired_size}", ignored)


def variable(name):
    (body,) = [b[name] for path, b in blocks("variable") if path == "variables.tf" and name in b]
    return body


class Access(unittest.TestCase):
    def test_the_endpoint_is_public_only_from_the_cidrs_given(self):
        (_, _, cluster), = list(resources("aws_eks_cluster"))
        vpc = cluster["vpc_config"][0]
        self.assertEqual(vpc["endpoint_private_access"], [True])
        self.assertEqual(vpc["endpoint_public_access"], ["${length(var.public_access_cidrs) > 0}"])
        self.assertIn("var.public_access_cidrs", vpc["public_access_cidrs"][0])
        cidrs = variable("public_access_cidrs")
        self.assertEqual(cidrs["default"], [[]], "private unless CIDRs are given")
        self.assertIn('c != "0.0.0.0/0"', cidrs["validation"][0]["condition"][0])

    def test_admins_are_named_and_the_creator_gets_nothing_implicitly(self):
        (_, _, cluster), = list(resources("aws_eks_cluster"))
        access = cluster["access_config"][0]
        self.assertEqual(access["authentication_mode"], ["API"])
        self.assertEqual(access["bootstrap_cluster_creator_admin_permissions"], [False])
        entries = {name: body for _, name, body in resources("aws_eks_access_entry")}
        associations = {name: body for _, name, body in resources("aws_eks_access_policy_association")}
        self.assertEqual(sorted(entries), ["admin", "viewer"])
        self.assertEqual(sorted(associations), ["admin", "viewer"])
        for kind in ("admin", "viewer"):
            for body in (entries[kind], associations[kind]):
                self.assertEqual(body["for_each"], [f"${{toset(var.{kind}_role_arns)}}"])
        self.assertTrue(associations["admin"]["policy_arn"][0].endswith("/AmazonEKSClusterAdminPolicy"))
        self.assertTrue(associations["viewer"]["policy_arn"][0].endswith("/AmazonEKSAdminViewPolicy"))
        admins = variable("admin_role_arns")
        self.assertNotIn("default", admins, "required: without an admin nobody reaches the cluster")
        self.assertIn("length(var.admin_role_arns) > 0", admins["validation"][0]["condition"][0])
        module = [b["eks"] for _, b in blocks("module") if "eks" in b][0]
        # People's roles, and the CI role that applies; the one that plans
        # only views.
        self.assertEqual(module["admin_role_arns"], ["${concat(var.admin_role_arns,local.ci_apply_role_arns)}"])
        self.assertEqual(module["viewer_role_arns"], ["${local.ci_plan_role_arns}"])
        self.assertEqual(module["public_access_cidrs"], ["${var.public_access_cidrs}"])
        with open(os.path.join(ROOT, "terraform.tfvars.example")) as f:
            example = hcl2.load(f)
        self.assertTrue(example["admin_role_arns"], "the example names its admins")


def irsa_roles():
    """(role name suffix, namespace, service accounts) of every IRSA module call."""
    for path, block in blocks("module"):
        for name, body in block.items():
            if name.startswith("__") or not body["source"][0].endswith("irsa"):
                continue
            role = body["name"][0]
            yield role.split("}-", 1)[-1], body["namespace"][0], body["service_accounts"][0]


def annotated_service_accounts():
    """(namespace, name, role name) of every ServiceAccount with an IRSA role
    in the platform template and deploy/."""
    import yaml

    repo = os.path.dirname(ROOT)
    files = glob.glob(os.path.join(repo, "platform-repo-template", "manifests", "**", "*.yaml"), recursive=True)
    files += glob.glob(os.path.join(repo, "deploy", "base", "*.yaml"))
    for path in files:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "ServiceAccount":
                    continue
                meta = doc["metadata"]
                arn = (meta.get("annotations") or {}).get("eks.amazonaws.com/role-arn")
                if arn:
                    # deploy/base's namespace comes from its kustomization.
                    yield meta.get("namespace", "ferry"), meta["name"], arn.rsplit("/", 1)[-1]


def addon_documents():
    """The documents of templates/cluster-addons.yaml.tftpl, as addons.tf
    splits them, with each `${var}` left in place."""
    import yaml

    with open(os.path.join(ROOT, "templates", "cluster-addons.yaml.tftpl")) as f:
        return [yaml.safe_load(text) for text in f.read().split("\n---\n")]


def addon_template_arguments():
    """templatefile's arguments in addons.tf: variable -> expression."""
    import re

    with open(os.path.join(ROOT, "addons.tf")) as f:
        text = f.read()
    call = text[text.index("templatefile("):]
    call = call[: call.index("})") + 2]
    return dict(re.findall(r"(\w+)\s*=\s*([^\s,}]+)", call.split("{", 1)[1]))


def addon_service_accounts():
    """(namespace, name, role name) of the add-on ServiceAccounts with an
    IRSA role: the annotation's variable resolved through addons.tf to the
    module that makes the role."""
    import re

    args = addon_template_arguments()
    modules = {name: body for _, block in blocks("module") for name, body in block.items()}
    for doc in addon_documents():
        if doc.get("kind") != "ServiceAccount":
            continue
        meta = doc["metadata"]
        arn = (meta.get("annotations") or {}).get("eks.amazonaws.com/role-arn")
        if not arn:
            continue
        (var,) = re.fullmatch(r"\$\{(\w+)\}", arn).groups()
        (module,) = re.fullmatch(r"module\.(\w+)\.arn", args[var]).groups()
        role = modules[module]["name"][0].replace("${var.name}", "ml-platform")
        yield meta["namespace"], meta["name"], role


# Service accounts the EKS add-ons make, not the platform's manifests.
ADDON_SERVICE_ACCOUNTS = {("kube-system", "ebs-csi-controller-sa"), ("kube-system", "efs-csi-controller-sa")}


class Irsa(unittest.TestCase):
    def test_every_annotated_service_account_may_assume_its_role(self):
        roles = {suffix: (ns, sas) for suffix, ns, sas in irsa_roles()}
        found = list(annotated_service_accounts()) + list(addon_service_accounts())
        self.assertGreaterEqual(len(found), 4, found)
        for ns, name, role in found:
            suffix = role.split("ml-platform-", 1)[-1]
            self.assertIn(suffix, roles, f"{ns}/{name} names role {role}, which terraform/ does not make")
            trust_ns, trusted = roles[suffix]
            self.assertEqual(trust_ns, ns, f"{ns}/{name}: role {role} trusts namespace {trust_ns}")
            self.assertIn(name, trusted, f"{ns}/{name} is annotated with {role}, whose trust names only {trusted}")

    def test_every_trusted_service_account_exists(self):
        annotated = {(ns, name) for ns, name, _ in annotated_service_accounts()}
        annotated |= {(ns, name) for ns, name, _ in addon_service_accounts()}
        for suffix, ns, sas in irsa_roles():
            for sa in sas:
                self.assertIn((ns, sa), annotated | ADDON_SERVICE_ACCOUNTS,
                              f"role {suffix} trusts {ns}/{sa}, which nothing declares")


class ClusterAddons(unittest.TestCase):
    def test_the_autoscaler_scales_this_clusters_groups_only(self):
        args = addon_template_arguments()
        self.assertEqual(args["cluster_name"], "module.eks.name")
        (deployment,) = [d for d in addon_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "cluster-autoscaler"]
        command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
        self.assertIn(
            "--node-group-auto-discovery=asg:tag=k8s.io/cluster-autoscaler/enabled,k8s.io/cluster-autoscaler/${cluster_name}",
            command,
        )
        module = [b["cluster_autoscaler_role"] for _, b in blocks("module") if "cluster_autoscaler_role" in b][0]
        policy = ast.literal_eval(module["policy_json"][0][len("${jsonencode("):-2])
        writes = [st for st in policy["Statement"] if any(not a.split(":")[1].startswith(("Describe", "Get")) for a in st["Action"])]
        self.assertEqual(len(writes), 1, writes)
        self.assertEqual(
            writes[0]["Condition"]["StringEquals"],
            {"aws:ResourceTag/k8s.io/cluster-autoscaler/${var.name}": "owned"},
            "the autoscaler may resize only the groups EKS tagged as this cluster's",
        )

    def test_the_autoscaler_release_matches_the_cluster_minor(self):
        version = variable("cluster_autoscaler_version")["default"]
        version = version[0] if isinstance(version, list) else version
        cluster = variable("kubernetes_version")["default"]
        cluster = cluster[0] if isinstance(cluster, list) else cluster
        self.assertTrue(version.startswith(f"v{cluster}."), (version, cluster))

    def test_the_device_plugin_runs_on_the_gpu_group_and_tolerates_its_taint(self):
        (ds,) = [d for d in addon_documents() if d["kind"] == "DaemonSet"]
        spec = ds["spec"]["template"]["spec"]
        with open(os.path.join(ROOT, "main.tf")) as f:
            gpu = hcl2.load(f)["locals"][0]["gpu"]
        gpu = str(gpu).replace("'", "\"")
        self.assertIn('"labels": {"role": "gpu-training"}', gpu)
        self.assertIn('"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"', gpu)
        self.assertEqual(spec["nodeSelector"], {"role": "gpu-training"})
        self.assertIn({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, spec["tolerations"])

    def test_every_addon_pod_of_the_control_plane_side_runs_on_system_nodes(self):
        for doc in addon_documents():
            if doc["kind"] == "Deployment":
                self.assertEqual(doc["spec"]["template"]["spec"]["nodeSelector"], {"role": "system"}, doc["metadata"]["name"])


class BucketNames(unittest.TestCase):
    def test_every_bucket_the_templates_name_is_one_terraform_makes(self):
        import re

        made = next(b["bucket"] for _, b in blocks("module") if "bucket" in b)
        names = {f"ml-platform-{b}" for b in ast.literal_eval(made["for_each"][0][len("${toset("):-2])}
        repo = os.path.dirname(ROOT)
        named = {}
        for path in glob.glob(os.path.join(repo, "platform-repo-template", "**", "*.yaml"), recursive=True):
            with open(path) as f:
                for bucket in re.findall(r"s3://([a-z0-9.-]+)", f.read()):
                    named.setdefault(bucket, os.path.relpath(path, repo))
        self.assertGreaterEqual(len(named), 3, named)
        for bucket, path in named.items():
            self.assertIn(bucket, names, f"{path} names s3://{bucket}, which terraform/ does not make")

    def test_sagemaker_reads_the_bucket_models_are_promoted_to(self):
        import re

        repo = os.path.dirname(ROOT)
        with open(os.path.join(repo, "platform-repo-template", "platform.yaml")) as f:
            served = set(re.findall(r"model_data: s3://([a-z0-9.-]+)/", f.read()))
        with open(os.path.join(repo, "platform-repo-template", "manifests", "airflow", "config.yaml")) as f:
            promoted = set(re.findall(r"name: MODEL_ARTIFACT_BUCKET, value: ([a-z0-9.-]+)", f.read()))
        self.assertEqual(served, promoted, "platform.yaml serves from the bucket the training DAG writes to")
        with open(os.path.join(ROOT, "iam.tf")) as f:
            iam = f.read()
        read = iam[iam.index('Sid      = "ReadModels"'):]
        read = read[: read.index("}")]
        self.assertIn('module.bucket["models"].arn', read)
        self.assertEqual(promoted, {"ml-platform-models"})


class Images(unittest.TestCase):
    def test_the_serving_image_is_terraforms_repository_at_the_training_mlflow_version(self):
        import re

        repo = os.path.dirname(ROOT)
        with open(os.path.join(repo, "platform-repo-template", "platform.yaml")) as f:
            images = set(re.findall(r"image: \S+\.amazonaws\.com/([a-z0-9/_-]+):(\S+)", f.read()))
        made = next(b["ecr"] for _, b in blocks("module") if "ecr" in b)
        repositories = {f"ml-platform/{r}" for r in made["repositories"][0]}
        for name, _ in images:
            self.assertIn(name, repositories, f"platform.yaml runs {name}, which terraform/ does not make")

        def pin(path, package):
            with open(os.path.join(repo, path)) as f:
                (version,) = re.findall(rf"^{package}==(\S+)$", f.read(), re.M)
            return version

        training = pin("dags-repo-template/requirements.txt", "mlflow-skinny")
        serving = pin("platform-repo-template/images/mlflow-pyfunc/requirements.txt", "mlflow")
        self.assertEqual(serving, training, "one MLflow version trains and serves")
        self.assertEqual(images, {("ml-platform/mlflow-pyfunc", serving)}, "platform.yaml runs the image images.yml pushes")
        tracking = pin("platform-repo-template/images/mlflow-server/requirements.txt", "mlflow")
        self.assertEqual(tracking, training, "one MLflow version tracks, trains and serves")

    def test_every_ecr_image_the_template_runs_is_built_pushed_and_made(self):
        import re

        repo = os.path.dirname(ROOT)
        texts = [os.path.join(repo, "platform-repo-template", "platform.yaml")]
        texts += glob.glob(os.path.join(repo, "platform-repo-template", "manifests", "**", "*.yaml"), recursive=True)
        run = set()
        for path in texts:
            with open(path) as f:
                run |= set(re.findall(r"\.amazonaws\.com/ml-platform/([a-z0-9_-]+):(\S+)", f.read()))
        made = next(b["ecr"] for _, b in blocks("module") if "ecr" in b)["repositories"][0]
        import yaml

        with open(os.path.join(repo, "platform-repo-template", ".github", "workflows", "images.yml")) as f:
            text = f.read()
        pushed = set(re.findall(r"push-to-ecr\.sh \S+ ml-platform/([a-z0-9_-]+) ", text))
        image_job = yaml.safe_load(text)["jobs"]["image"]
        self.assertIn('.github/push-to-ecr.sh "$IMAGE" "ml-platform/$IMAGE" "$TAG"', str(image_job["steps"]))
        pushed |= set(image_job["strategy"]["matrix"]["image"])
        self.assertGreaterEqual({name for name, _ in run}, {"mlflow-pyfunc", "mlflow-server"})
        for name, tag in run:
            self.assertIn(name, made, f"the template runs ml-platform/{name}, which terraform/ does not make")
            self.assertIn(name, pushed, f"the template runs ml-platform/{name}, which images.yml never pushes")
            self.assertTrue(os.path.exists(os.path.join(repo, "platform-repo-template", "images", name)))

    def test_every_image_the_template_builds_is_run_by_the_tag_of_what_it_builds(self):
        import re
        import subprocess

        repo = os.path.dirname(ROOT)
        template = os.path.join(repo, "platform-repo-template")
        run = set()
        for path in glob.glob(os.path.join(template, "manifests", "**", "*.yaml"), recursive=True):
            with open(path) as f:
                run |= set(re.findall(r"\.amazonaws\.com/ml-platform/([a-z0-9_-]+):([^\s\"']+)", f.read()))
        built = [n for n in ("airflow-ml", "mlflow-server", "notebook") if os.path.exists(os.path.join(template, "images", n, "Dockerfile"))]
        self.assertEqual(built, ["airflow-ml", "mlflow-server", "notebook"])
        for name in built:
            want = subprocess.run(["bash", ".github/image-tag.sh", f"images/{name}"], cwd=template,
                                  capture_output=True, text=True, check=True).stdout.strip()
            tags = {tag for n, tag in run if n == name}
            self.assertEqual(tags, {want}, f"the manifests run ml-platform/{name} at {tags}; images.yml pushes {want}")

    def test_the_airflow_image_installs_the_dags_repos_pins_and_the_airflow_the_manifests_name(self):
        import re

        repo = os.path.dirname(ROOT)

        def pins(path):
            with open(os.path.join(repo, path)) as f:
                return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", f.read(), re.M))

        dags = pins("dags-repo-template/requirements.txt")
        image = pins("platform-repo-template/images/airflow-ml/requirements.txt")
        self.assertGreaterEqual(len(dags), 4)
        for package, version in dags.items():
            self.assertEqual(image.get(package), version, f"the DAGs pin {package}=={version}; the Airflow image installs {image.get(package)}")
        with open(os.path.join(repo, "platform-repo-template", "images", "airflow-ml", "Dockerfile")) as f:
            (version,) = re.findall(r"^ARG VERSION=(\S+)$", f.read(), re.M)
        self.assertEqual(pins("tools/airflow-constraints.txt")["apache-airflow"], version,
                         "ferry's tests run the Airflow the image is built on")
        # The notebooks: the same Airflow and every package at the same pin.
        notebook = pins("platform-repo-template/images/notebook/requirements.txt")
        self.assertEqual(notebook, {**image, "apache-airflow": version})

    def test_only_main_of_the_platform_repository_may_push_and_only_platform_images(self):
        with open(os.path.join(ROOT, "github.tf")) as f:
            github = f.read()
        self.assertIn('sub = "repo:${var.platform_repository}:ref:refs/heads/main"', github)
        ((_, _, policy),) = [r for r in resources("aws_iam_role_policy") if r[1] == "images"]
        (text,) = policy["policy"]
        doc = ast.literal_eval(text[len("${jsonencode("):-2])
        push = next(st for st in doc["Statement"] if st["Sid"] == "PushPlatformImages")
        self.assertEqual(
            push["Resource"],
            "${[for r in ['mlflow-pyfunc', 'mlflow-server', 'airflow-ml', 'notebook'] : module.ecr.arns[r]]}",
        )
        self.assertEqual(policy["role"], ['${aws_iam_role.github["images"].id}'])


class InfraCi(unittest.TestCase):
    def test_every_github_role_trusts_one_repository_and_one_kind_of_run(self):
        ((_, _, role),) = [r for r in resources("aws_iam_role") if r[1] == "github"]
        self.assertEqual(role["for_each"], ["${local.github_roles}"])
        (text,) = role["assume_role_policy"]
        (statement,) = ast.literal_eval(text[len("${jsonencode("):-2])["Statement"]
        self.assertEqual(statement["Action"], "sts:AssumeRoleWithWebIdentity")
        self.assertEqual(
            statement["Condition"]["StringEquals"],
            {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com", "token.actions.githubusercontent.com:sub": "${each.value.sub}"},
        )
        with open(os.path.join(ROOT, "github.tf")) as f:
            github = f.read()
        self.assertIn('sub = "repo:${var.infra_repository}:pull_request"', github)
        self.assertIn('sub = "repo:${var.infra_repository}:environment:production"', github)
        attached = {name: body for _, name, body in resources("aws_iam_role_policy_attachment") if name.startswith("terraform_")}
        self.assertTrue(attached["terraform_plan_read"]["policy_arn"][0].endswith(":policy/ReadOnlyAccess"), attached)
        self.assertEqual(attached["terraform_plan_read"]["role"], ['${aws_iam_role.github["plan"].name}'])
        self.assertEqual(attached["terraform_apply_admin"]["role"], ['${aws_iam_role.github["apply"].name}'])

    def test_the_bootstrap_takes_ferrys_deploy_from_a_variable(self):
        with open(os.path.join(ROOT, "bootstrap.tf")) as f:
            bootstrap = f.read()
        self.assertNotIn("../deploy", bootstrap, "an infra repository holds no ferry source tree")
        self.assertIn("var.ferry_deploy_dir", bootstrap)

    def test_the_workflow_plans_prs_and_applies_main_behind_the_environment(self):
        import yaml

        with open(os.path.join(ROOT, ".github", "workflows", "terraform.yml")) as f:
            wf = yaml.safe_load(f)
        jobs = wf["jobs"]
        self.assertEqual(jobs["apply"]["environment"], "production")
        self.assertIn("push", jobs["apply"]["if"])
        self.assertIn("pull_request", jobs["plan"]["if"])
        self.assertEqual(jobs["validate"].get("permissions", wf["permissions"]), {"contents": "read"}, "validate needs no AWS")
        steps = " ".join(str(s.get("run", "")) for s in jobs["validate"]["steps"])
        self.assertIn("terraform init -backend=false", steps)
        self.assertIn("terraform validate", steps)


class NodesAndNetwork(unittest.TestCase):
    def test_nodes_use_imdsv2_and_an_encrypted_root_volume(self):
        (_, _, template), = list(resources("aws_launch_template"))
        metadata = template["metadata_options"][0]
        self.assertEqual(metadata["http_tokens"], ["required"])
        self.assertEqual(metadata["http_put_response_hop_limit"], [1], "pods must not reach the node role")
        ebs = template["block_device_mappings"][0]["ebs"][0]
        self.assertEqual(ebs["encrypted"], [True])
        self.assertEqual(ebs["volume_type"], ["gp3"])
        self.assertEqual(ebs["volume_size"], ["${var.node_root_volume_gib}"])
        self.assertGreaterEqual(variable("node_root_volume_gib")["default"][0], 50)
        (_, _, group), = list(resources("aws_eks_node_group"))
        self.assertEqual(group["launch_template"][0]["id"], ["${aws_launch_template.node.id}"])

    def test_the_control_plane_logs_into_a_group_with_retention_and_the_key(self):
        groups = {name: body for _, name, body in resources("aws_cloudwatch_log_group")}
        cluster = groups["cluster"]
        self.assertEqual(cluster["name"], ["/aws/eks/${var.name}/cluster"])
        self.assertEqual(cluster["kms_key_id"], ["${var.kms_key_arn}"])
        (_, _, eks), = list(resources("aws_eks_cluster"))
        self.assertIn("${aws_cloudwatch_log_group.cluster}", eks["depends_on"][0])

    def test_private_subnets_reach_aws_by_endpoints_and_nat_can_be_single(self):
        endpoints = {name: body for _, name, body in resources("aws_vpc_endpoint")}
        self.assertEqual(endpoints["s3"]["vpc_endpoint_type"], ["Gateway"])
        self.assertEqual(endpoints["interface"]["private_dns_enabled"], [True])
        wanted = set(variable("vpc_interface_endpoints")["default"][0])
        self.assertTrue({"ecr.api", "ecr.dkr", "sts", "logs", "sagemaker.runtime"} <= wanted, wanted)
        (_, _, nat), = list(resources("aws_nat_gateway"))
        self.assertEqual(nat["count"], ["${local.nat_count}"])
        self.assertEqual(variable("single_nat_gateway")["default"], [False], "one per zone unless asked")

    def test_the_database_has_subnets_of_its_own_with_no_route_out(self):
        import ipaddress

        tables = {name: body for _, name, body in resources("aws_route_table")}
        self.assertNotIn("route", tables["database"], "database subnets reach nothing outside the VPC")
        subnets = {name: body for _, name, body in resources("aws_subnet")}
        self.assertEqual(set(subnets), {"public", "private", "database"})
        # Every zone's subnets, as cidrsubnet would carve a /16 for 3 zones.
        import re

        def cidrs(body):
            newbits, index = re.fullmatch(r"\$\{cidrsubnet\(var\.cidr, ?(\d+), ?(.+)\)\}", body["cidr_block"][0]).groups()
            offset = sum(int(x) for x in re.findall(r"\d+", index))
            net = ipaddress.ip_network("10.0.0.0/16")
            return [list(net.subnets(new_prefix=16 + int(newbits)))[offset + i] for i in range(3)]

        carved = [c for body in subnets.values() for c in cidrs(body)]
        for i, a in enumerate(carved):
            for b in carved[i + 1:]:
                self.assertFalse(a.overlaps(b), (a, b))
        (rds,) = [b["rds"] for _, b in blocks("module") if "rds" in b]
        self.assertEqual(
            rds["subnet_ids"],
            ["${var.database_subnets ? module.network.database_subnet_ids : module.network.private_subnet_ids}"],
        )
        self.assertEqual(variable("database_subnets")["default"], [True])


class PlatformSecrets(unittest.TestCase):
    """terraform/secrets.tf writes what the template's Secrets name, with
    every key their pods read, and ferry may read exactly those."""

    def terraform_secrets(self):
        (local,) = [b for _, b in blocks("locals") if "generated_secrets" in b]
        generated = {k: set(v) for k, v in local["generated_secrets"][0].items()}
        issued = {k: set(v) for k, v in local["issued_secrets"][0].items()}
        self.assertFalse(set(generated) & set(issued))
        return generated, issued

    def template(self):
        """Secrets the template fills ((ns, name) -> id) and the keys its
        documents read of each Secret ((ns, name) -> keys)."""
        import yaml

        def key_refs(value, out):
            if isinstance(value, dict):
                ref = value.get("secretKeyRef")
                if isinstance(ref, dict):
                    out.add((ref["name"], ref["key"]))
                for v in value.values():
                    key_refs(v, out)
            elif isinstance(value, list):
                for v in value:
                    key_refs(v, out)
            elif isinstance(value, str) and "secretKeyRef" in value:
                # A pod template kept in a ConfigMap (Airflow's task pods).
                key_refs(yaml.safe_load(value), out)

        repo = os.path.dirname(ROOT)
        filled, read = {}, {}
        pattern = os.path.join(repo, "platform-repo-template", "manifests", "**", "*.yaml")
        for path in glob.glob(pattern, recursive=True):
            with open(path) as f:
                for doc in yaml.safe_load_all(f):
                    if not doc:
                        continue
                    ns = doc["metadata"].get("namespace", "airflow")
                    if doc["kind"] == "Secret":
                        annotations = doc["metadata"].get("annotations") or {}
                        self.assertIn("ferry.dev/secrets-manager", annotations,
                                      f"{path}: Secret {ns}/{doc['metadata']['name']} holds values in git")
                        keys = annotations.get("ferry.dev/secrets-manager-keys", "")
                        filled[(ns, doc["metadata"]["name"])] = (
                            annotations["ferry.dev/secrets-manager"],
                            {k.strip() for k in keys.split(",") if k.strip()},
                        )
                    refs = set()
                    key_refs(doc, refs)
                    for name, key in refs:
                        read.setdefault((ns, name), set()).add(key)
        return filled, read

    def test_every_secret_the_template_fills_is_written_with_every_key_its_pods_read(self):
        generated, issued = self.terraform_secrets()
        made = {**generated, **issued}
        filled, read = self.template()
        self.assertGreaterEqual(len(filled), 9, filled)
        for (ns, name), (id_, taken) in filled.items():
            # ferry copies the members it names, and refuses a value without one.
            missing = read.get((ns, name), set()) - taken
            self.assertFalse(missing, f"pods read keys {missing} of {ns}/{name}, which its annotation does not take")
            if ":secret:rds!" in id_:
                # RDS's own master secret (output postgres_master_secret_arn):
                # it holds these two keys.
                self.assertEqual((ns, name), ("platform-db", "master"))
                self.assertEqual(taken, {"username", "password"})
                continue
            self.assertEqual(id_, f"ml-platform/{ns}/{name}", f"Secret {ns}/{name} names {id_}")
            self.assertIn(f"{ns}/{name}", made, f"Secret {ns}/{name} names {id_}, which terraform/ does not make")
            self.assertEqual(taken, made[f"{ns}/{name}"], f"{ns}/{name}: the keys it takes are those terraform/ writes")
        for (ns, name) in read:
            if ns != "ferry":
                self.assertIn((ns, name), filled, f"a pod reads Secret {ns}/{name}, which the template does not declare")
        for secret in made:
            self.assertIn(tuple(secret.split("/")), filled, f"terraform/ writes {secret}, which no template Secret names")

    def test_database_urls_name_the_driver_the_images_install(self):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which
        # neither the Airflow nor the MLflow server image has.
        generated, _ = self.terraform_secrets()
        (local,) = [b for _, b in blocks("locals") if "generated_secrets" in b]
        secrets = local["generated_secrets"][0]
        urls = [secrets["airflow/airflow-db"]["sql_alchemy_conn"], secrets["mlflow/mlflow-db"]["uri"]]
        for url in urls:
            self.assertIn("postgresql+psycopg2://", url)
            self.assertIn("sslmode=require", url)
        repo = os.path.dirname(ROOT)
        for path in ("platform-repo-template/images/mlflow-server/requirements.txt", "platform-repo-template/images/airflow-ml/requirements.txt"):
            with open(os.path.join(repo, path)) as f:
                self.assertIn("psycopg2-binary==", f.read(), path)

    def test_ferry_reads_exactly_these_secrets_and_decrypts_only_through_secrets_manager(self):
        (ferry,) = [b["ferry_role"] for _, b in blocks("module") if "ferry_role" in b]
        policy = ast.literal_eval(ferry["policy_json"][0][len("${jsonencode("):-2])
        (read,) = [st for st in policy["Statement"] if "secretsmanager:GetSecretValue" in as_list(st["Action"])]
        readable = str(read["Resource"])
        for expected in ("aws_secretsmanager_secret.generated", "aws_secretsmanager_secret.issued",
                         "module.rds.master_user_secret_arn"):
            self.assertIn(expected, readable)
        self.assertNotIn("*", readable)
        self.assertEqual(as_list(read["Action"]), ["secretsmanager:GetSecretValue"])
        (decrypt,) = [st for st in policy["Statement"] if st.get("Sid") == "DecryptThroughSecretsManagerOnly"]
        self.assertEqual(decrypt["Condition"]["StringEquals"]["kms:ViaService"],
                         "secretsmanager.${var.region}.amazonaws.com")
        secrets = list(resources("aws_secretsmanager_secret"))
        self.assertEqual(len(secrets), 2)
        for _, name, body in secrets:
            self.assertEqual(as_list(body["kms_key_id"])[0], "${aws_kms_key.platform.arn}", name)
        (db,) = [b for _, _, b in resources("aws_db_instance")]
        self.assertEqual(as_list(db["master_user_secret_kms_key_id"])[0], "${var.kms_key_arn}")


class Documentation(unittest.TestCase):
    def test_every_variable_and_output_is_described(self):
        for kind in ("variable", "output"):
            for path, block in blocks(kind):
                for name, body in block.items():
                    if name.startswith("__"):
                        continue  # python-hcl2's line bookkeeping
                    description = body.get("description")
                    text = description[0] if isinstance(description, list) and description else description
                    self.assertTrue(text and str(text).strip(), f"{path}: {kind} {name} has no description")

    def test_versions_are_pinned(self):
        (_, versions), = [(p, b) for p, b in blocks("terraform") if p == "versions.tf"]
        providers = versions["required_providers"][0]
        for name in ("aws", "kubernetes", "tls"):
            provider = providers[name][0] if isinstance(providers[name], list) else providers[name]
            self.assertRegex(provider["version"], r"^~> \d+\.\d+$", name)
        self.assertTrue(versions["required_version"])


if __name__ == "__main__":
    unittest.main()
