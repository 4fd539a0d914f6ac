"""Keeps one ring service running: ``python -m services.supervisor --name NAME -- COMMAND...``.

The supervisor starts COMMAND as its child, in its own process group, and waits for it. A child
killed by a signal (SIGKILL, the OOM killer, a segfault) is started again after a backoff that doubles
from ``first_backoff_s`` up to ``max_backoff_s``; past ``max_restarts`` restarts within ``window_s``
the supervisor gives up and exits. A child that exits by itself is not restarted: status 0 is a
shutdown, any other status an error that restarting cannot fix (a missing model, a port taken), and
the supervisor exits with that status. A restarted child finds ``FLOWRING_RESTART`` (the restart's
number; absent on the first start) in its environment: the scheduler resumes its journal only then. SIGTERM, SIGINT or SIGHUP to the supervisor stop the child and
the supervisor, and no restart follows. With ``--standby S`` the supervisor keeps a second copy of COMMAND
started S s after the child, in ``FLOWRING_STANDBY`` mode: it does its slow start (imports, tokenizer) and
waits on its stdin (:func:`await_takeover`). When the child dies, the standby takes over (it reads the
restart's number) instead of a cold start, and a new standby is started S s later; a standby that died
meanwhile means a cold start. Every decision is one structlog line. The same supervisor runs
every ring service of a local cluster (services/launcher.py) and of a cluster of boards (started over
SSH in the service's place, services/cluster/bringup.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog

from common.observability.logs import configure

log = structlog.get_logger()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RESTART_ENV = "FLOWRING_RESTART"  # set in a restarted child's environment: the restart's number
STANDBY_ENV = "FLOWRING_STANDBY"  # set in a standby's environment: it waits for its takeover on stdin
CHILD_STOP_GRACE_S = 10.0  # after a stop signal, the child gets this long before SIGKILL


@dataclass(frozen=True)
class RestartPolicy:
    first_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_restarts: int = 5  # within window_s; one more death and the supervisor gives up
    window_s: float = 300.0


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay_s: float = 0.0
    reason: str = ""  # why not, when not


def decide(returncode: int, restarts: deque[float], now: float, policy: RestartPolicy) -> Decision:
    """Whether a child that ended with ``returncode`` (negative: killed by that signal) starts again,
    given the times of its earlier restarts; ``restarts`` loses the ones older than the window."""
    if returncode >= 0:
        return Decision(False, reason="exited by itself" if returncode == 0 else f"exited with status {returncode}")
    while restarts and now - restarts[0] > policy.window_s:
        restarts.popleft()
    if len(restarts) >= policy.max_restarts:
        return Decision(False, reason=f"{len(restarts)} restarts within {policy.window_s:g} s")
    delay = min(policy.first_backoff_s * 2 ** len(restarts), policy.max_backoff_s)
    return Decision(True, delay_s=delay)


def await_takeover() -> str:
    """In a standby (``STANDBY_ENV`` set), once its slow start is done: block until the supervisor hands it
    the service; returns the restart's number. Exits quietly when the supervisor is gone (stdin closed)."""
    line = sys.stdin.readline()
    if not line.strip():
        sys.exit(0)
    os.environ.pop(STANDBY_ENV, None)
    os.environ[RESTART_ENV] = line.strip()
    return line.strip()


class Supervisor:
    def __init__(self, name: str, command: list[str], policy: RestartPolicy, standby_after_s: float | None = None
                 ) -> None:
        self.name, self.command, self.policy = name, command, policy
        self.standby_after_s = standby_after_s  # None: no standby
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.standby: subprocess.Popen[bytes] | None = None
        self.standby_due = 0.0  # monotonic time at which the next standby starts

    def stop(self, signum: int, _frame: object = None) -> None:
        """A stop signal: end the child (it may have had the signal from the group already), restart nothing."""
        self.stopping.set()
        for proc in (self.child, self.standby):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)

    def run(self) -> int:
        """Supervise until the child ends for good; returns the supervisor's exit status."""
        try:
            return self._supervise()
        finally:
            self._end_standby()

    def _supervise(self) -> int:
        restarts: deque[float] = deque()
        self.child = self._spawn(0)
        self._standby_later()
        log.info("service_started", pid=self.child.pid, command=self.command[:4])
        while True:
            returncode = self._wait()
            if self.stopping.is_set():
                log.info("supervisor_stopped", returncode=returncode)
                return 0
            began = time.monotonic()
            decision = decide(returncode, restarts, began, self.policy)
            if not decision.restart:
                level = log.info if returncode == 0 else log.error
                level("service_not_restarted", returncode=returncode, reason=decision.reason)
                return returncode if returncode > 0 else 1
            log.warning("service_died", signal=signal.Signals(-returncode).name, pid=self.child.pid,
                        restart_in_s=decision.delay_s, restarts=len(restarts))
            if self.stopping.wait(decision.delay_s):
                log.info("supervisor_stopped", returncode=returncode)
                return 0
            restarts.append(time.monotonic())
            standby = self._take_over(len(restarts))
            self.child = standby or self._spawn(len(restarts))
            self._standby_later()
            log.warning("service_restarted", pid=self.child.pid, restart=len(restarts), standby=standby is not None,
                        after_s=round(time.monotonic() - began, 3))

    def _spawn(self, restart: int, standby: bool = False) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k not in (RESTART_ENV, STANDBY_ENV)}
        env |= {RESTART_ENV: str(restart)} if restart else {}
        env |= {STANDBY_ENV: "1"} if standby else {}
        stdin = subprocess.PIPE if standby else subprocess.DEVNULL
        return subprocess.Popen(self.command, stdin=stdin, env=env)  # stdout, stderr: the supervisor's

    def _standby_later(self) -> None:
        if self.standby_after_s is not None:
            self.standby_due = time.monotonic() + self.standby_after_s

    def _keep_standby(self) -> None:
        """Start the standby when due; one that died is logged and started again after the delay."""
        if self.standby_after_s is None or self.stopping.is_set():
            return
        if self.standby is not None and self.standby.poll() is not None:
            log.warning("standby_died", pid=self.standby.pid, returncode=self.standby.returncode)
            self.standby = None
            self._standby_later()
        if self.standby is None and time.monotonic() >= self.standby_due:
            self.standby = self._spawn(0, standby=True)
            log.info("standby_started", pid=self.standby.pid)

    def _take_over(self, restart: int) -> subprocess.Popen[bytes] | None:
        """Hand the service to the standby (its slow start done or under way); None when there is none alive."""
        standby, self.standby = self.standby, None
        if standby is None or standby.poll() is not None or standby.stdin is None:
            return None
        try:
            standby.stdin.write(f"{restart}\n".encode())
            standby.stdin.close()
        except OSError:  # it died just now
            return None
        return standby

    def _end_standby(self) -> None:
        standby, self.standby = self.standby, None
        if standby is None:
            return
        if standby.stdin is not None:
            standby.stdin.close()  # it exits by itself once warm; a signal ends it sooner
        if standby.poll() is None:
            standby.terminate()
        try:
            standby.wait(timeout=CHILD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            standby.kill()

    def _wait(self) -> int:
        """The child's return code; once stopping, a child still running after its grace is killed."""
        assert self.child is not None
        kill_at = 0.0
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if not self.stopping.is_set():
                    self._keep_standby()
                    continue
                kill_at = kill_at or time.monotonic() + CHILD_STOP_GRACE_S
                if time.monotonic() > kill_at:
                    self.child.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="The service's name, for the log lines.")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-file", type=Path, default=None, help="JSON log lines here (default: stderr).")
    parser.add_argument("--max-restarts", type=int, default=RestartPolicy.max_restarts)
    parser.add_argument("--standby", type=float, default=None, metavar="S",
                        help="Keep a warm standby copy of the command, started S s after the child.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the service's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the service's command after --")
    configure(args.log_level, service=f"{args.name}-supervisor", log_file=args.log_file)
    supervisor = Supervisor(args.name, command, RestartPolicy(max_restarts=args.max_restarts),
                            standby_after_s=args.standby)
    for signum in STOP_SIGNALS:
        signal.signal(signum, supervisor.stop)
    log.info("supervisor_started", pid=os.getpid(), service=args.name)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
