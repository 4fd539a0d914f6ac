"""Keeps one ring service running: ``python -m services.supervisor --name NAME -- COMMAND...``.

The supervisor starts COMMAND as its child, in its own process group, and waits for it. A child
killed by a signal (SIGKILL, the OOM killer, a segfault) is started again after a backoff that doubles
from ``first_backoff_s`` up to ``max_backoff_s``; past ``max_restarts`` restarts within ``window_s``
the supervisor gives up and exits. A child that exits by itself is not restarted: status 0 is a
shutdown, any other status an error that restarting cannot fix (a missing model, a port taken), and
the supervisor exits with that status. A restarted child finds ``FLOWRING_RESTART`` (the restart's
number; absent on the first start) in its environment: the scheduler resumes its journal only then. SIGTERM, SIGINT or SIGHUP to the supervisor stop the child and
the supervisor, and no restart follows. Every decision is one structlog line. The same supervisor runs
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


class Supervisor:
    def __init__(self, name: str, command: list[str], policy: RestartPolicy) -> None:
        self.name, self.command, self.policy = name, command, policy
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int, _frame: object = None) -> None:
        """A stop signal: end the child (it may have had the signal from the group already), restart nothing."""
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        """Supervise until the child ends for good; returns the supervisor's exit status."""
        restarts: deque[float] = deque()
        self.child = self._spawn(0)
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
            self.child = self._spawn(len(restarts))
            log.warning("service_restarted", pid=self.child.pid, restart=len(restarts),
                        after_s=round(time.monotonic() - began, 3))

    def _spawn(self, restart: int) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != RESTART_ENV} | ({RESTART_ENV: str(restart)} if restart else {})
        return subprocess.Popen(self.command, stdin=subprocess.DEVNULL, env=env)  # stdout, stderr: the supervisor's

    def _wait(self) -> int:
        """The child's return code; once stopping, a child still running after its grace is killed."""
        assert self.child is not None
        kill_at = 0.0
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if not self.stopping.is_set():
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
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the service's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the service's command after --")
    configure(args.log_level, service=f"{args.name}-supervisor", log_file=args.log_file)
    supervisor = Supervisor(args.name, command, RestartPolicy(max_restarts=args.max_restarts))
    for signum in STOP_SIGNALS:
        signal.signal(signum, supervisor.stop)
    log.info("supervisor_started", pid=os.getpid(), service=args.name)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
