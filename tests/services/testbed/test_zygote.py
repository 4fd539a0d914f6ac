"""The tests' zygote: a forked process starts as an exec'd one would, and a forked supervisor forks its service
and restarts it after a SIGKILL (tests/conftest.py puts the zygote in the launcher's place)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from services import launcher

pytestmark = pytest.mark.skipif(os.environ.get("FLOWRING_EXEC_SERVICES") == "1", reason="services are exec'd")
PROBE = [sys.executable, "-m", "tests.support.probe_process"]


def _reports(output: Path, count: int, timeout_s: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [json.loads(ln) for ln in output.read_text().splitlines() if ln.startswith("{")] if output.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{count} reports not in {output} within {timeout_s} s")


def _gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_forked_process_starts_as_an_execd_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE", "seen")
    pids = [launcher._spawn([*PROBE, "0"], tmp_path / f"{i}.out") for i in range(2)]
    a, b = (_reports(tmp_path / f"{i}.out", 1)[0] for i in range(2))
    assert a["preloaded"] and b["preloaded"]  # forked from the zygote, torch already imported
    assert [a["pid"], b["pid"]] == pids and a["sid"] == a["pid"]  # its own session, as `stop` expects
    assert a["cwd"] == str(launcher._project_root()) and a["argv"] == ["0"] and a["probe"] == "seen"
    assert a["random"] != b["random"] and a["torch_random"] != b["torch_random"]  # fresh seeds, as exec gives


def test_a_forked_supervisor_forks_its_service_and_restarts_it(tmp_path):
    cmd = launcher.supervised("probe", [*PROBE, "600"], sys.executable, tmp_path / "supervisor.log", "info")
    supervisor = launcher._spawn(cmd, tmp_path / "probe.out")
    try:
        first = _reports(tmp_path / "probe.out", 1)[0]
        assert first["ppid"] == supervisor and first["preloaded"] and first["restart"] == ""
        os.kill(first["pid"], signal.SIGKILL)
        second = _reports(tmp_path / "probe.out", 2)[1]
        assert second["ppid"] == supervisor and second["pid"] != first["pid"] and second["restart"] == "1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor, signal.SIGTERM)
    assert _gone(supervisor)
    events = [json.loads(ln)["event"] for ln in (tmp_path / "supervisor.log").read_text().splitlines()]
    assert events.count("service_restarted") == 1 and events[-1] == "supervisor_stopped"
