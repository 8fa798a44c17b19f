"""Unit tests of the shared code: data checks, training, the champion rule
and the platform.yaml edit of the promotion PR."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from mlplatform import data, packaging, promotion, training  # noqa: E402

PLATFORM = """\
sagemaker:
  endpoints:
    # the classifier
    - name: diagnosis
      execution_role_arn: arn:aws:iam::123456789012:role/x
      variants:
        - name: primary
          model_name: diagnosis-classifier
          image: img:1
          model_data: s3://models/diagnosis-classifier/1/model.tar.gz   # v1
        - name: shadow
          model_name: other-model
          model_data: s3://models/other-model/4/model.tar.gz
    - name: fraud
      variants:
        - name: primary
          model_name: diagnosis-classifier
          model_data: s3://models/diagnosis-classifier/1/model.tar.gz
"""


class Data(unittest.TestCase):
    def test_the_split_is_stable_and_valid(self):
        a, b = data.load(), data.load()
        self.assertEqual(a.y_test.tolist(), b.y_test.tolist())
        stats = data.validate(a)
        self.assertEqual(stats["features"], 30)
        self.assertEqual(stats["train_rows"] + stats["test_rows"], 569)

    def test_missing_values_are_refused(self):
        ds = data.load()
        ds.x_test[0, 0] = float("nan")
        with self.assertRaisesRegex(data.DataValidationError, "x_test has 1 missing"):
            data.validate(ds)


class Training(unittest.TestCase):
    def test_tuned_model_is_good_and_reports_metrics(self):
        trained = training.train(data.load(), c_grid=(0.1, 1.0), folds=3)
        self.assertIn(trained.params["C"], (0.1, 1.0))
        self.assertGreater(trained.metrics["f1"], 0.9)
        self.assertGreater(trained.metrics["roc_auc"], 0.95)

    def test_champion_rule(self):
        self.assertTrue(training.better({"f1": 0.9}, None))
        self.assertTrue(training.better({"f1": 0.95}, {"f1": 0.9}))
        self.assertFalse(training.better({"f1": 0.9}, {"f1": 0.9}))
        self.assertFalse(training.better({"f1": 0.91}, {"f1": 0.9}, margin=0.02))


class Promotion(unittest.TestCase):
    def test_only_the_endpoint_variant_serving_the_model_changes(self):
        new = promotion.point_endpoint(PLATFORM, "diagnosis", "diagnosis-classifier", "s3://m/7.tar.gz")
        changed = [(a, b) for a, b in zip(PLATFORM.splitlines(), new.splitlines()) if a != b]
        self.assertEqual(
            changed,
            [(
                "          model_data: s3://models/diagnosis-classifier/1/model.tar.gz   # v1",
                "          model_data: s3://m/7.tar.gz",
            )],
        )

    def test_an_unknown_endpoint_is_an_error(self):
        with self.assertRaises(promotion.PromotionError):
            promotion.point_endpoint(PLATFORM, "nope", "diagnosis-classifier", "s3://m")

    def test_the_platform_template_can_be_promoted(self):
        template = Path(__file__).resolve().parents[2] / "platform-repo-template" / "platform.yaml"
        if not template.exists():
            self.skipTest("outside ferry's repository")
        text = template.read_text()
        new = promotion.point_endpoint(text, "diagnosis", "diagnosis-classifier", "s3://m/9/model.tar.gz")
        self.assertEqual(sum(a != b for a, b in zip(text.splitlines(), new.splitlines())), 1)


class FakeGitHub:
    """The few GitHub answers `deployed_commit` reads, newest first."""

    def __init__(self, deployments):
        self.deployments = deployments  # [(id, sha, [latest status first])]
        self.calls = []

    def call(self, method, path, body=None):
        self.calls.append(path)
        if "/statuses" in path:
            (d,) = [d for d in self.deployments if f"/deployments/{d[0]}/" in path]
            return [{"state": st} for st in d[2]][:1]
        return [{"id": i, "sha": sha} for i, sha, _ in self.deployments]


class Deployed(unittest.TestCase):
    def test_the_served_version_is_read_from_model_data(self):
        text = PLATFORM.replace("s3://models/diagnosis-classifier/1/", "s3://bucket/models/diagnosis-classifier/12/", 1)
        self.assertEqual(promotion.served_versions(text, "diagnosis", "diagnosis-classifier"), {"12"})
        self.assertEqual(promotion.served_versions(text, "fraud", "diagnosis-classifier"), set())
        self.assertEqual(
            promotion.served_versions(
                promotion.point_endpoint(text, "diagnosis", "diagnosis-classifier", promotion.model_data_url("b", "diagnosis-classifier", "13")),
                "diagnosis",
                "diagnosis-classifier",
            ),
            {"13"},
        )

    def test_the_newest_success_is_what_serves(self):
        gh = FakeGitHub([(3, "c3", ["in_progress"]), (2, "c2", ["failure"]), (1, "c1", ["success"])])
        self.assertEqual(promotion.deployed_commit(gh, "o/p", "production"), "c1")
        self.assertIn("/repos/o/p/deployments?environment=production&per_page=30", gh.calls)
        gh = FakeGitHub([(2, "c2", ["success"]), (1, "c1", ["inactive"])])
        self.assertEqual(promotion.deployed_commit(gh, "o/p", "production"), "c2")
        self.assertIsNone(promotion.deployed_commit(FakeGitHub([(1, "c1", ["failure"])]), "o/p", "production"))
        self.assertIsNone(promotion.deployed_commit(FakeGitHub([]), "o/p", "production"))


class Packaging(unittest.TestCase):
    def test_the_archive_has_mlmodel_at_its_root_and_is_the_same_every_time(self):
        import gzip
        import io
        import os
        import tarfile
        import tempfile
        import time

        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp)
            (model / "MLmodel").write_text("flavors: {}\n")
            (model / "sub").mkdir()
            (model / "sub" / "weights.bin").write_bytes(b"\x00\x01")
            first = packaging.archive(model)
            os.utime(model / "MLmodel", (time.time() + 100, time.time() + 100))
            self.assertEqual(packaging.archive(model), first, "a retry writes the same bytes")
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
                self.assertEqual(tar.getnames(), ["MLmodel", "sub", "sub/weights.bin"])
            (model / "MLmodel").unlink()
            with self.assertRaisesRegex(packaging.PackagingError, "no MLmodel"):
                packaging.archive(model)


if __name__ == "__main__":
    unittest.main()
