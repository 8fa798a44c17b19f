"""A versioned Airflow 3 DAG bundle over the revisions ferry publishes.

ferry publishes every DAGs commit it accepts as a complete, never-modified
directory ``<path>/.ferry/<sha>`` and points ``<path>/<link>`` at the live
one with one atomic rename. That is what a versioned bundle needs, without a
git mirror or a checkout in every task pod:

- the DAG processor's instance (no version) reads through a pointer of its
  own, ``<bundle storage>/<name>/tracking``, which only ``refresh()`` swaps
  to the live link's target. Airflow labels each parse with the version seen
  at the last refresh, so the files under ``path`` may change only then;
- a task's instance (the run's ``bundle_version``) is ``<path>/.ferry/<sha>``
  itself. When that revision is gone, ``initialize()`` raises and the task
  fails with the reason and the setting to change.

ferry keeps every revision Airflow may still run (queued or running runs,
the version of every DAG, runs that ended recently) when ferry.yaml's
``targets.dags.airflow`` lets it ask Airflow's API.

One module, standard library and Airflow only, so that it can be mounted
from a ConfigMap into ``$AIRFLOW_HOME/config`` of the stock image.
Configure it as the ``dags-folder`` bundle so runs already in flight carry
on::

    [dag_processor]
    dag_bundle_config_list = [{"name": "dags-folder",
      "classpath": "ferry_airflow.FerryDagBundle",
      "kwargs": {"path": "/opt/airflow/dags", "link": "current",
                 "view_url_template": "https://github.com/acme/dags/tree/{version}"}}]

Written for Airflow 3.0 to 3.3 (``get_current_version`` returns a
``BundleVersion`` where it exists, a string before 3.3); tested on 3.3.2.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

try:  # Airflow 3.3+
    from airflow.dag_processing.bundles.base import BundleVersion
except ImportError:  # 3.0-3.2 take the bare commit
    BundleVersion = None

__all__ = ["FerryDagBundle", "RevisionGone"]
__version__ = "1.0.0"

REVISIONS = ".ferry"
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_BASE_TAKES_VIEW_URL = "view_url_template" in inspect.signature(BaseDagBundle.__init__).parameters


class RevisionGone(RuntimeError):
    """The revision a DAG run is pinned to is no longer on the volume."""


class FerryDagBundle(BaseDagBundle):
    """DAGs from ferry's published revisions; one version per commit.

    :param path: ferry's ``targets.dags.destination`` as mounted here.
    :param link: ferry's ``targets.dags.link`` (``current``).
    """

    supports_versioning = True

    def __init__(self, *, path: str, link: str = "current", **kwargs) -> None:
        view_url_template = kwargs.pop("view_url_template", None)
        if _BASE_TAKES_VIEW_URL:
            kwargs["view_url_template"] = view_url_template
        super().__init__(**kwargs)
        self._view_url_template = view_url_template
        self.root = Path(path)
        self.link = link
        if self.version is not None and not _SHA.match(self.version):
            raise ValueError(
                f"DAG bundle {self.name!r}: version {self.version!r} is not a commit; "
                "FerryDagBundle versions are the commits ferry published"
            )

    # Where the processor's instance reads: a symlink of this bundle's own,
    # on the pod's local disk, swapped only by refresh().
    @property
    def _tracking(self) -> Path:
        return self.base_dir / "tracking"

    def _revision_dir(self, sha: str) -> Path:
        return self.root / REVISIONS / sha

    @property
    def path(self) -> Path:
        if self.version is not None:
            return self._revision_dir(self.version)
        return self._tracking

    def _live(self) -> str:
        link = self.root / self.link
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            raise RuntimeError(
                f"DAG bundle {self.name!r}: {link} does not exist yet; ferry has not "
                "published a revision of the DAGs repo here (see ferry's /api/v1/status/<source>)"
            ) from None
        except OSError as err:
            raise RuntimeError(f"DAG bundle {self.name!r}: cannot read the link {link}: {err}") from None
        sha = Path(target).name
        if not _SHA.match(sha):
            raise RuntimeError(
                f"DAG bundle {self.name!r}: {link} points at {target!r}, not at a revision "
                f"ferry published ({REVISIONS}/<commit>)"
            )
        return sha

    def _tracked(self) -> str | None:
        try:
            return Path(os.readlink(self._tracking)).name
        except OSError:
            return None

    def _track(self, sha: str) -> None:
        # A new symlink renamed over the old one: a reader resolves either
        # the old revision or the new one, never a missing path.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.base_dir / f".tracking.{os.getpid()}"
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(self._revision_dir(sha), tmp)
        os.replace(tmp, self._tracking)
        self._note_version(sha)

    def _note_version(self, sha: str) -> None:
        # Airflow's stale-bundle cleanup removes versions/<sha> beside each
        # usage record it expires, and fails when that directory is missing.
        # ferry's revisions need no local copy, so an empty one stands in.
        (self.versions_dir / sha).mkdir(parents=True, exist_ok=True)

    def initialize(self) -> None:
        if self.version is not None:
            revision = self._revision_dir(self.version)
            if not revision.is_dir():
                raise RevisionGone(
                    f"DAG bundle {self.name!r}: revision {self.version} of the DAGs is no longer in "
                    f"{self.root / REVISIONS}; ferry removed it after Airflow stopped running it. "
                    "To run this DAG run's tasks again, keep revisions longer: raise "
                    "targets.dags.retention.keep or max_age, or targets.dags.airflow.window, in "
                    "ferry.yaml (or trigger a new run, which uses the live revision)"
                )
            self._note_version(self.version)
        elif self._tracked() is None:
            with self.lock():
                if self._tracked() is None:
                    self._track(self._live())
        super().initialize()

    def refresh(self) -> None:
        if self.version is not None:
            return  # a versioned instance is one commit; there is nothing newer to see
        with self.lock():
            live = self._live()
            if live != self._tracked():
                self._track(live)

    def get_current_version(self):
        sha = self.version if self.version is not None else self._tracked()
        if sha is None:
            return None
        return BundleVersion(version=sha) if BundleVersion is not None else sha

    def view_url_template(self) -> str | None:
        return self._view_url_template
