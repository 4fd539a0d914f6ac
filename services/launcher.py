"""Starting and stopping a local cluster: one background process per service, on loopback.

The run folder holds ``cluster.json`` (every service's settings), ``pids.json`` and ``logs/NAME.log``
(each service's JSON log lines); a cluster of boards (services/cluster/) records ``boards.json`` instead
of ``pids.json``. ``cluster.json`` exists exactly while a cluster is up, so commands never wait on a
stopped one. Every service, the scheduler and the OpenAI API included, runs under its supervisor
(services/supervisor.py, log ``logs/NAME-supervisor.log``), which restarts it when a signal kills it;
``pids.json`` records the supervisors' pids, each the leader of its process group. The scheduler
journals its requests in ``journal.jsonl`` (services/scheduler/journal.py), removed when a cluster starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.cluster.keys import client_curve, own_keys
from common.cluster.machine_defaults import thread_environment
from common.cluster.partition import even_split
from common.cluster.settings import ClusterSpec, Timeouts
from common.cluster.spec_builder import ClusterRequest, build_spec, ports_needed
from common.models.modeling import load_model_spec
from common.speculation.modes import DraftSettings
from services.client import Client, ClusterUnavailable
from services.run_folder import RunFolder


class LaunchError(RuntimeError):
    """The cluster could not be started or stopped; the message says why in one line."""


_HANDED_OUT: set[int] = set()


def free_ports(host: str, count: int) -> list[int]:
    """Ports the OS reports free right now, never one this process was given before.

    A port is bound and released to learn it is free, so another process may still take it
    before its service binds it (a race possible but rare). Within this process the race is
    closed: a cluster planned first has not bound its ports yet when the next call asks, and
    the OS would happily report them free again.
    """
    socks, ports = [], []
    while len(ports) < count:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))
        socks.append(s)
        port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            ports.append(port)
    for s in socks:
        s.close()
    return ports


def plan_local(
    base: Path,
    draft: Path | None,
    stages: int,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int = 0,
    host: str = "127.0.0.1",
    draft_settings: DraftSettings | None = None,
    layer_ranges: list[tuple[int, int]] | None = None,
    timeouts: Timeouts | None = None,
    draft_head: Path | None = None,
) -> ClusterSpec:
    """Every service on ``host`` with freshly chosen ports; layers split evenly unless given (the tests' short
    form of :func:`local_spec`)."""
    asked = ClusterRequest(base=str(base), draft=str(draft or ""), draft_head=str(draft_head or ""), dtype=dtype,
                           device=device, threads=threads, draft_settings=draft_settings or DraftSettings(),
                           timeouts=timeouts or Timeouts())
    return local_spec(asked, stages, layer_ranges, host)


def local_spec(asked: ClusterRequest, stages: int, layer_ranges: list[tuple[int, int]] | None = None,
               host: str = "127.0.0.1") -> ClusterSpec:
    """``asked`` placed on ``host`` with freshly chosen ports; ``stages`` stages, layers split evenly unless
    ``layer_ranges`` gives them."""
    layers = load_model_spec(Path(asked.base)).num_layers
    ranges = layer_ranges or even_split(layers, stages)
    if len(ranges) != stages or ranges[0][0] != 0 or ranges[-1][1] != layers or any(
        a[1] != b[0] for a, b in zip(ranges, ranges[1:], strict=False)
    ):
        raise LaunchError(f"layer ranges {ranges} do not cover the base model's {layers} layers in order")
    ports = iter(free_ports(host, ports_needed(stages)))
    return build_spec(asked, ranges, lambda _: host, lambda _: next(ports))


def client_for(spec: ClusterSpec, timeout_s: float | None = None) -> Client:
    """A client of ``spec``'s scheduler, with the clients' CURVE key pair on a LAN cluster."""
    s = spec.scheduler
    return Client(s.endpoint(s.client_port), timeout_s or spec.timeouts.request_timeout_s,
                  client_curve(own_keys(spec), s), spec.max_message_bytes)


def running(run_dir: Path) -> bool:
    """Whether ``run_dir`` records a cluster: live local services, or boards started and not yet stopped."""
    return RunFolder(run_dir).boards.exists() or (RunFolder(run_dir).pids.exists() and _alive(_read_pids(run_dir)))


def start(spec: ClusterSpec, run_dir: Path, *, log_level: str = "info", scheduler_standby_s: float | None = None
          ) -> None:
    """Spawn every service in the background and return once the scheduler reports all ready. With
    ``scheduler_standby_s`` the scheduler's supervisor keeps a warm standby scheduler, started that many seconds
    after the scheduler, which takes over at once when the scheduler dies (services/supervisor.py)."""
    if running(run_dir):
        raise LaunchError(f"a cluster is already running from {run_dir}: run `flowring down` first")
    logs = RunFolder(run_dir).logs
    logs.mkdir(parents=True, exist_ok=True)
    RunFolder(run_dir).journal.unlink(missing_ok=True)  # a new cluster resumes nothing of an older one
    RunFolder(run_dir).cluster.write_text(spec.to_json())
    pids: dict[str, int] = {}
    for place in (spec.scheduler, *spec.ring):
        cmd = [sys.executable, "-m", "services.run", "--cluster", str(RunFolder(run_dir).cluster),
               "--service", place.name, "--log-level", log_level, "--log-file", str(logs / f"{place.name}.log")]
        # The scheduler too: a restarted one resumes every unfinished request from its journal.
        standby = scheduler_standby_s if place is spec.scheduler else None
        cmd = supervised(place.name, cmd, sys.executable, logs / f"{place.name}-supervisor.log", log_level, standby)
        if place.cpus:
            cmd = ["taskset", "-c", place.cpus, *cmd]
        env = {**os.environ, **thread_environment(bool(place.cpus), os.environ)}
        pids[place.name] = _spawn(cmd, logs / f"{place.name}.out", env)
    RunFolder(run_dir).pids.write_text(json.dumps(pids))
    try:
        wait_ready(spec, LocalProcesses(pids, run_dir))
    except LaunchError:
        stop(run_dir)
        raise


def supervised(name: str, cmd: list[str], python: str, log_file: Path | str, log_level: str,
               standby_s: float | None = None) -> list[str]:
    """``cmd`` run under services.supervisor, which restarts it when a signal kills it (from a warm standby
    started ``standby_s`` after it, if given)."""
    standby = ["--standby", f"{standby_s:g}"] if standby_s is not None else []
    return [python, "-m", "services.supervisor", "--name", name, "--log-level", log_level, "--log-file",
            str(log_file), *standby, "--", *cmd]


def start_api(spec: ClusterSpec, run_dir: Path, port: int, timeout_s: float = 60.0) -> str:
    """Start ``flowring serve`` on loopback beside the running cluster; returns its base URL once it answers."""
    import urllib.error
    import urllib.request

    cmd = [sys.executable, "-m", "services.cli.main", "serve", "--run-dir", str(run_dir), "--host", "127.0.0.1",
           "--port", str(port)]
    cmd = supervised("api", cmd, sys.executable, RunFolder(run_dir).logs / "api-supervisor.log", "info")
    pids = _read_pids(run_dir)
    pids["api"] = _spawn(cmd, RunFolder(run_dir).logs / "api.out")
    RunFolder(run_dir).pids.write_text(json.dumps(pids))
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive({"api": pids["api"]}):
            raise LaunchError(f"the OpenAI API exited while starting: {_last_error(RunFolder(run_dir).logs / 'api.out')}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2.0) as answer:
                if answer.status == 200:
                    return url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise LaunchError(f"the OpenAI API did not answer at {url} within {timeout_s:.0f} s; see {RunFolder(run_dir).logs}")


def _spawn(cmd: list[str], output: Path, env: dict[str, str] | None = None) -> int:
    """A detached process in its own session (so `stop` can signal its group); stdout and stderr to ``output``."""
    with open(output, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=_project_root(), env=env)
    return proc.pid


class Launcher(Protocol):
    """Services being started: local processes (:class:`LocalProcesses`) or services on boards over SSH
    (services/cluster/bringup.py). :func:`wait_ready` is the one loop that waits for either."""

    @property
    def check_interval_s(self) -> float:
        """How often ``check_started`` may run (an SSH round trip costs; a local check does not)."""

    @property
    def logs(self) -> str:
        """Where a person looks when the services never got ready."""

    def check_started(self) -> None:
        """Raise :class:`LaunchError` naming a service that exited while starting, and its last error."""


@dataclass(frozen=True)
class LocalProcesses:
    """Services started by :func:`start` on this machine, one process (group) each."""

    pids: dict[str, int]
    run_dir: Path
    check_interval_s: float = 0.0

    @property
    def logs(self) -> str:
        return str(RunFolder(self.run_dir).logs)

    def check_started(self) -> None:
        dead = [name for name, pid in self.pids.items() if not _alive({name: pid})]
        if dead:
            raise LaunchError(f"{dead[0]} exited while starting: "
                              f"{_last_error(RunFolder(self.run_dir).logs / f'{dead[0]}.out')}")


def wait_ready(spec: ClusterSpec, launcher: Launcher) -> None:
    """Return once ``spec``'s scheduler reports every service ready; raise :class:`LaunchError` when one of
    ``launcher``'s services exits first, or after ``spec.timeouts.ready_timeout_s``."""
    timeout_s = spec.timeouts.ready_timeout_s
    deadline = time.monotonic() + timeout_s
    next_check = time.monotonic() + launcher.check_interval_s
    with client_for(spec) as client:
        while time.monotonic() < deadline:
            if time.monotonic() >= next_check:
                launcher.check_started()
                next_check = time.monotonic() + launcher.check_interval_s
            try:
                if client.status(timeout_s=2.0).ready:
                    return
            except ClusterUnavailable:
                pass  # the scheduler is still loading
            time.sleep(0.2)
    raise LaunchError(f"services not ready after {timeout_s:.0f} s; see {launcher.logs}")


def stop(run_dir: Path, grace_s: float = 10.0) -> list[str]:
    """Ask the cluster to shut down, then terminate whatever is left. Returns the services stopped."""
    pids = _read_pids(run_dir)
    if not pids:
        RunFolder(run_dir).cluster.unlink(missing_ok=True)  # left by an older version or a crash: stale
        return []
    if "api" in pids:  # the HTTP server does not take the scheduler's Shutdown: stop it first
        _signal_group(pids["api"], signal.SIGTERM)
    cluster = RunFolder(run_dir).cluster
    if cluster.exists():
        try:
            with client_for(ClusterSpec.load(cluster), 2.0) as client:
                client.shutdown(timeout_s=2.0)
        except (ClusterUnavailable, OSError, ValueError):
            pass  # already gone or never came up: signals below finish the job
    deadline = time.monotonic() + grace_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids.values():
            _signal_group(pid, sig)
        end = time.monotonic() + 3.0
        while _alive(pids) and time.monotonic() < end:
            time.sleep(0.1)
    if _alive(pids):
        raise LaunchError(f"processes {sorted(pids.values())} would not stop")
    RunFolder(run_dir).pids.unlink(missing_ok=True)
    RunFolder(run_dir).cluster.unlink(missing_ok=True)
    return sorted(pids)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, sig)


def _read_pids(run_dir: Path) -> dict[str, int]:
    path = RunFolder(run_dir).pids
    return json.loads(path.read_text()) if path.exists() else {}


def _alive(pids: dict[str, int]) -> bool:
    for pid in pids.values():
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            waited = 0  # not our child (another `flowring` process started it)
        if waited == pid:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        if _is_zombie(pid):
            continue
        return True
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def _last_error(output: Path) -> str:
    """The last error a process reported: from its JSON log file (NAME.log), else its raw output (NAME.out)."""
    log = output.with_suffix(".log")
    try:
        lines = [ln for ln in output.read_text(errors="replace").splitlines() if ln.strip()]
        if log.exists():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] + lines
    except OSError:
        return "no log"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "critical") or "exception" in entry:
            return str(entry.get("error") or entry.get("event"))
    return lines[-1][-300:] if lines else "no output"


def _project_root() -> Path:
    return Path(__file__).resolve().parent.parent


