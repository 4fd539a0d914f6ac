"""The run folder: where a running cluster keeps its state, each file named once.

``cluster.json`` (every service's settings) exists exactly while a cluster is up; ``pids.json`` holds a local
cluster's process ids, ``boards.json`` a cluster of boards' record (services/cluster/bringup.py), ``logs/``
every service's log, ``journal.jsonl`` the scheduler's
request journal. The default folder is ``run`` under the cache root (FLOWRING_HOME, resolved only by
common.models.cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.models.cache import cache_root

CLUSTER_FILE = "cluster.json"
PIDS_FILE = "pids.json"
BOARDS_FILE = "boards.json"
JOURNAL_FILE = "journal.jsonl"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def default(cls) -> RunFolder:
        return cls(cache_root() / "run")

    @property
    def cluster(self) -> Path:
        return self.path / CLUSTER_FILE

    @property
    def pids(self) -> Path:
        return self.path / PIDS_FILE

    @property
    def boards(self) -> Path:
        return self.path / BOARDS_FILE

    @property
    def journal(self) -> Path:
        """The scheduler's request journal (services/scheduler/journal.py)."""
        return self.path / JOURNAL_FILE

    @property
    def logs(self) -> Path:
        return self.path / "logs"


def default_run_dir() -> Path:
    """The run folder commands use unless told another (``--run-dir``)."""
    return RunFolder.default().path
