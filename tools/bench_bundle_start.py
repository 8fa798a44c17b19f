"""One task start's bundle preparation, as Airflow's task runner does it.

Run once per simulated task pod (a fresh process and a fresh, empty bundle
storage directory, as a KubernetesExecutor pod has): builds the bundle the
run is pinned to and initializes it, exactly the calls task_runner.py times
as `bundle_prepare_ms`. Prints one JSON line: prepare_ms, and the files the
DAG file's path resolves to (so the caller can check both bundles serve the
same revision).

    python bench_bundle_start.py <version> <dag_rel_path>

The bundle comes from [dag_processor] dag_bundle_config_list (set by the caller).
"""

import json
import sys
import time
from pathlib import Path

from airflow.dag_processing.bundles.manager import DagBundlesManager

version, rel_path = sys.argv[1], sys.argv[2]
started = time.monotonic()
bundle = DagBundlesManager().get_bundle(name="dags-folder", version=version)
bundle.initialize()
prepare_ms = (time.monotonic() - started) * 1000
dag_file = Path(bundle.path, rel_path)
print(json.dumps({"prepare_ms": prepare_ms, "dag_file": dag_file.read_text()}))
