"""The supervisor: which deaths restart a service, with what backoff, and its behaviour as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from services.supervisor import Decision, RestartPolicy, decide

POLICY = RestartPolicy(first_backoff_s=0.5, max_backoff_s=4.0, max_restarts=3, window_s=60.0)


def test_a_signal_death_restarts_with_a_doubling_backoff() -> None:
    restarts: deque[float] = deque()
    delays = []
    for now in (10.0, 11.0, 12.0):
        decision = decide(-signal.SIGKILL, restarts, now, POLICY)
        assert decision.restart
        delays.append(decision.delay_s)
        restarts.append(now)
    assert delays == [0.5, 1.0, 2.0]
    assert decide(-signal.SIGKILL, restarts, 13.0, POLICY) == Decision(False, reason="3 restarts within 60 s")
    assert decide(-signal.SIGSEGV, restarts, 71.5, POLICY) == Decision(True, delay_s=1.0)  # two left the window
    assert len(restarts) == 1


def test_the_backoff_is_capped() -> None:
    policy = RestartPolicy(first_backoff_s=1.0, max_backoff_s=4.0, max_restarts=10)
    assert decide(-9, deque([0.0] * 5), 1.0, policy).delay_s == 4.0


def test_an_exit_by_itself_is_not_restarted() -> None:
    assert decide(0, deque(), 0.0, POLICY) == Decision(False, reason="exited by itself")
    assert decide(1, deque(), 0.0, POLICY) == Decision(False, reason="exited with status 1")


def _supervise(tmp_path: Path, *command: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "t-supervisor.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.supervisor", "--name", "t", "--log-file", str(log),
                             "--max-restarts", "1", "--", *command], start_new_session=True)
    return proc, log


def _events(log: Path, event: str, count: int, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        found = [e for e in map(json.loads, lines) if e["event"] == event]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count} {event} line(s) in {log}")


def test_a_killed_child_is_restarted_then_the_limit_ends_supervision(tmp_path) -> None:
    proc, log = _supervise(tmp_path, "sleep", "60")
    try:
        first = _events(log, "service_started", 1)[0]["pid"]
        os.kill(first, signal.SIGKILL)
        restarted = _events(log, "service_restarted", 1)[0]
        assert restarted["pid"] != first and restarted["restart"] == 1
        assert _events(log, "service_died", 1)[0]["signal"] == "SIGKILL"
        os.kill(restarted["pid"], signal.SIGKILL)  # one restart allowed: this death ends it
        assert proc.wait(timeout=30) == 1
        assert "1 restarts within 300 s" in _events(log, "service_not_restarted", 1)[0]["reason"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_stop_signal_ends_child_and_supervisor_without_a_restart(tmp_path) -> None:
    proc, log = _supervise(tmp_path, "sleep", "60")
    child = _events(log, "service_started", 1)[0]["pid"]
    os.killpg(proc.pid, signal.SIGTERM)  # as `flowring down` does: the whole group
    assert proc.wait(timeout=30) == 0
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "supervisor_stopped" in events and "service_restarted" not in events
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[-1][:3]


def test_a_failing_service_is_not_restarted_and_its_status_is_kept(tmp_path) -> None:
    proc, log = _supervise(tmp_path, sys.executable, "-c", "raise SystemExit(3)")
    assert proc.wait(timeout=30) == 3
    assert _events(log, "service_not_restarted", 1)[0]["reason"] == "exited with status 3"


def test_a_restarted_child_knows_it_is_a_restart(tmp_path) -> None:
    marks = tmp_path / "marks"
    proc, log = _supervise(tmp_path, "sh", "-c", f'echo "${{FLOWRING_RESTART:-first}}" >> {marks}; exec sleep 60')
    try:
        os.kill(_events(log, "service_started", 1)[0]["pid"], signal.SIGKILL)
        restarted = _events(log, "service_restarted", 1)[0]
        deadline = time.monotonic() + 30
        while marks.read_text().split() != ["first", "1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marks.read_text().split() == ["first", "1"]  # the scheduler resumes its journal only then
        os.kill(restarted["pid"], signal.SIGKILL)
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
