"""FerryDagBundle against a volume laid out as ferry publishes it.

    AIRFLOW_HOME=$(mktemp -d) python -m unittest test_ferry_airflow   (in ferry-airflow/)
"""

import os
import tempfile
import unittest
from pathlib import Path

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
STORAGE = tempfile.mkdtemp()
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH"] = STORAGE

from ferry_airflow import FerryDagBundle, RevisionGone  # noqa: E402

A = "a" * 40
B = "b" * 40


class FerryDagBundleTest(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp())
        for sha, code in ((A, "A"), (B, "B")):
            (self.root / ".ferry" / sha).mkdir(parents=True)
            (self.root / ".ferry" / sha / "dag.py").write_text(f"CODE = {code!r}\n")
        self.name = self.id().rsplit(".", 1)[-1]

    def publish(self, sha):
        tmp = self.root / ".current.tmp"
        os.symlink(f".ferry/{sha}", tmp)
        os.replace(tmp, self.root / "current")

    def bundle(self, version=None):
        return FerryDagBundle(name=self.name, version=version, path=str(self.root))

    def test_the_processor_sees_a_new_revision_only_at_refresh(self):
        self.publish(A)
        bundle = self.bundle()
        bundle.initialize()
        self.assertEqual(bundle.get_current_version().version, A)
        self.assertEqual((bundle.path / "dag.py").read_text(), "CODE = 'A'\n")
        self.publish(B)
        # Airflow labels this parse with A: the files must still be A's.
        self.assertEqual((bundle.path / "dag.py").read_text(), "CODE = 'A'\n")
        self.assertEqual(bundle.get_current_version().version, A)
        path = bundle.path
        bundle.refresh()
        self.assertEqual(bundle.path, path, "the path Airflow stores file locations under stays")
        self.assertEqual((bundle.path / "dag.py").read_text(), "CODE = 'B'\n")
        self.assertEqual(bundle.get_current_version().version, B)

    def test_a_run_reads_its_own_revision_whatever_is_live(self):
        self.publish(B)
        bundle = self.bundle(version=A)
        bundle.initialize()
        self.assertEqual((bundle.path / "dag.py").read_text(), "CODE = 'A'\n")
        self.assertEqual(bundle.get_current_version().version, A)
        # Airflow's stale-bundle cleanup removes versions/<sha> beside each record.
        self.assertTrue((bundle.versions_dir / A).is_dir())

    def test_a_removed_revision_fails_the_task_naming_it_and_the_settings(self):
        bundle = self.bundle(version="c" * 40)
        with self.assertRaises(RevisionGone) as caught:
            bundle.initialize()
        message = str(caught.exception)
        self.assertIn("c" * 40, message)
        self.assertIn("targets.dags.retention.keep", message)
        self.assertIn("targets.dags.airflow.window", message)

    def test_before_ferry_publishes_the_processor_is_told_why(self):
        with self.assertRaises(RuntimeError) as caught:
            self.bundle().initialize()
        self.assertIn("ferry has not published", str(caught.exception))

    def test_a_link_ferry_did_not_make_is_refused(self):
        os.symlink("elsewhere", self.root / "current")
        with self.assertRaises(RuntimeError) as caught:
            self.bundle().initialize()
        self.assertIn("not at a revision ferry published", str(caught.exception))

    def test_a_version_that_is_not_a_commit_is_refused(self):
        with self.assertRaises(ValueError):
            self.bundle(version="../../etc")

    def test_the_view_url_names_the_commit(self):
        bundle = FerryDagBundle(
            name=self.name,
            path=str(self.root),
            view_url_template="https://github.com/acme/ml-dags/tree/{version}/dags",
        )
        self.assertEqual(
            bundle.view_url_template(), "https://github.com/acme/ml-dags/tree/{version}/dags"
        )


if __name__ == "__main__":
    unittest.main()
