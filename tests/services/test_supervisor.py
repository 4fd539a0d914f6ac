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


STANDBY_CHILD = """
import os, sys, time
from services.supervisor import STANDBY_ENV, await_takeover
marks = open(sys.argv[1], "a", buffering=1)
if STANDBY_ENV in os.environ:
    marks.write(f"warm {os.getpid()}\\n")
    marks.write(f"took-over {await_takeover()} {os.environ.get('FLOWRING_RESTART')}\\n")
else:
    marks.write(f"cold {os.environ.get('FLOWRING_RESTART', 'first')}\\n")
time.sleep(60)
"""


def test_a_warm_standby_takes_over_and_a_new_one_follows(tmp_path) -> None:
    marks = tmp_path / "marks"
    log = tmp_path / "t-supervisor.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.supervisor", "--name", "t", "--log-file", str(log),
                             "--standby", "0.1", "--", sys.executable, "-c", STANDBY_CHILD, str(marks)],
                            start_new_session=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        first = _events(log, "service_started", 1)[0]["pid"]
        standby = _events(log, "standby_started", 1)[0]["pid"]
        _lines(marks, f"warm {standby}")
        os.kill(first, signal.SIGKILL)
        restarted = _events(log, "service_restarted", 1)[0]
        assert restarted["pid"] == standby and restarted["standby"] is True
        _lines(marks, "took-over 1 1")  # the restart's number, in its environment too (the journal is resumed)
        second = _events(log, "standby_started", 2)[1]["pid"]  # a new standby for the next death
        assert second not in (first, standby)
        assert "cold 1" not in marks.read_text()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in (standby, second):  # gone, or a zombie of the dead supervisor
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _lines(path: Path, line: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"no line {line!r} in {path}: {path.read_text() if path.exists() else ''}")
