"""The one ready-wait of `flowring up`, local or on boards: ready, a service dead while starting, a timeout."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from common.cluster.settings import ClusterSpec, Timeouts
from common.wire.client import StatusReply
from services import launcher
from services.client import ClusterUnavailable
from services.launcher import LaunchError, LocalProcesses, wait_ready


@dataclass
class _Scheduler:
    """Answers status: unavailable ``loading`` times, then ready (never, when ``loading`` is None)."""

    loading: int | None
    asked: int = 0

    def status(self, timeout_s: float) -> StatusReply:
        self.asked += 1
        if self.loading is None or self.asked <= self.loading:
            raise ClusterUnavailable("still loading")
        return StatusReply(ready=True)


@dataclass
class _Launcher:
    check_interval_s: float = 0.0
    logs: str = "the logs"
    dies_at: int | None = None  # the check that finds a service dead
    checks: list[int] = field(default_factory=list)

    def check_started(self) -> None:
        self.checks.append(len(self.checks) + 1)
        if self.dies_at is not None and len(self.checks) >= self.dies_at:
            raise LaunchError("stage-1 exited while starting: boom")


def _spec(ready_timeout_s: float) -> ClusterSpec:
    return ClusterSpec(base="b", draft="d", timeouts=Timeouts(ready_timeout_s=ready_timeout_s))


@pytest.fixture
def scheduler(monkeypatch):
    def use(loading: int | None) -> _Scheduler:
        answer = _Scheduler(loading)
        monkeypatch.setattr(launcher, "client_for", lambda spec: contextlib.nullcontext(answer))
        return answer
    return use


def test_returns_once_the_scheduler_reports_ready_checking_the_services_meanwhile(scheduler):
    answer, starting = scheduler(2), _Launcher()
    wait_ready(_spec(30.0), starting)
    assert answer.asked == 3 and len(starting.checks) == 3


def test_a_service_dead_while_starting_ends_the_wait_with_its_error(scheduler):
    scheduler(None)
    with pytest.raises(LaunchError, match="stage-1 exited while starting: boom"):
        wait_ready(_spec(30.0), _Launcher(dies_at=2))


def test_an_expensive_check_waits_its_interval_and_a_timeout_names_the_logs(scheduler):
    scheduler(None)
    starting = _Launcher(check_interval_s=60.0, logs="run/logs/ under each board's home")
    with pytest.raises(LaunchError, match="services not ready after 1 s; see run/logs/ under each board's home"):
        wait_ready(_spec(0.6), starting)
    assert starting.checks == []  # an SSH round trip every 60 s: none within the 0.6 s


def test_local_processes_name_the_one_that_exited_and_its_last_error(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "stage-1.out").write_text("Traceback ...\nValueError: no such model\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(LaunchError, match="stage-1 exited while starting: ValueError: no such model"):
        LocalProcesses({"drafter": os.getpid(), "stage-1": dead.pid}, tmp_path).check_started()
    LocalProcesses({"drafter": os.getpid()}, tmp_path).check_started()  # alive: no error
