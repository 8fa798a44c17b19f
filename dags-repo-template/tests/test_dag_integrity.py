"""Every DAG imports, has an owner, retries and tags; Airflow itself checks
for cycles when it builds a DAG (a cycle is an import error here)."""

import os
import unittest
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"


class DagIntegrity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        # As the dag-processor does: the bundle (the DAGs folder) is on
        # sys.path, so DAG files can import the shared `mlplatform` package.
        from airflow.dag_processing.dagbag import BundleDagBag

        cls.bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)

    def test_every_file_imports(self):
        self.assertEqual(self.bag.import_errors, {})

    def test_the_expected_dags_exist(self):
        self.assertEqual(sorted(self.bag.dag_ids), ["diagnosis_champion", "diagnosis_scoring", "diagnosis_training"])

    def test_owner_retries_and_tags(self):
        for dag_id, dag in self.bag.dags.items():
            with self.subTest(dag=dag_id):
                self.assertTrue(dag.tags, "tags help people find a DAG")
                for task in dag.tasks:
                    self.assertNotIn(task.owner, ("", "airflow"), f"{task.task_id}: set default_args owner")
                    self.assertGreaterEqual(task.retries, 1, f"{task.task_id}: retries")

    def test_training_flow(self):
        dag = self.bag.dags["diagnosis_training"]
        promote = dag.get_task("promote")
        self.assertEqual({t.task_id for t in promote.upstream_list}, {"package", "train_and_register"})
        package = dag.get_task("package")
        self.assertEqual(
            {t.task_id for t in package.upstream_list}, {"beats_champion", "train_and_register"}
        )

    def test_the_champion_follows_deployments_one_run_at_a_time(self):
        dag = self.bag.dags["diagnosis_champion"]
        self.assertEqual(dag.max_active_runs, 1)
        self.assertEqual([t.task_id for t in dag.tasks], ["follow_deployment"])


if __name__ == "__main__":
    unittest.main()
