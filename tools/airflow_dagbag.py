#!/usr/bin/env python3
"""Parse a DAGs folder with Airflow's own DagBag and report what Airflow sees.

Usage:
    airflow_dagbag.py FOLDER            print {"dag_ids": [...], "import_errors": {...}} as JSON
    airflow_dagbag.py --check FOLDER    also exit 1 when any file fails to import

With --check this is a ferry `validation.command` hook: ferry runs it in the
staged revision (FOLDER ".") and blocks the publish when it exits non-zero.
Import-error paths are printed relative to FOLDER so reports name repo files.
"""

import json
import os
import sys
import warnings


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    folder = os.path.abspath(args[0])
    warnings.simplefilter("ignore")
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    try:
        # Airflow >= 3.1 parses a folder as a bundle: the folder is on
        # sys.path, so DAG files may import packages that live beside them.
        from pathlib import Path

        from airflow.dag_processing.dagbag import BundleDagBag

        bag = BundleDagBag(dag_folder=folder, bundle_path=Path(folder))
    except ImportError:  # Airflow < 3.1
        from airflow.models.dagbag import DagBag

        sys.path.insert(0, folder)
        bag = DagBag(dag_folder=folder)
    errors = {os.path.relpath(path, folder): text for path, text in bag.import_errors.items()}
    print(json.dumps({"dag_ids": sorted(bag.dag_ids), "import_errors": errors}))
    if check and errors:
        for path, text in sorted(errors.items()):
            last = [line for line in text.strip().splitlines() if line.strip()][-1]
            print(f"{path}: {last}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
