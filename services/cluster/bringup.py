"""Bringing a cluster of boards up from the head, and down again, over SSH.

``up``: lay the cluster out from the inventory (layer split, memory per board), probe every board
(nothing starts unless every board passes), build each service's weight slice on the head, ship the slices
a board lacks and every service's cluster file, start each service detached, and wait until the
scheduler reports every service ready. The head's run folder keeps ``cluster.json`` (every service's
real address; the head's client reads it) and ``boards.json`` (boards, SSH options and pids: all that
``down`` needs). On a board, under its ``home``: ``slices/<hash>/``, ``keys/board-NAME.key_secret`` (its own
CURVE key pair, mode 0600 in a 0700 folder: common.cluster.keys), ``run/logs/<service>.log`` (its JSON
log lines, rotated) and ``run/logs/<service>.out`` (anything else it printed, e.g. a crash). Every ZeroMQ
socket of the cluster is CURVE (common.wire.curve); the head's own clients use the clients' key pair. Each
service, the scheduler included, runs under the local cluster's supervisor (services/supervisor.py), started
detached in its place, which restarts it on its board when a signal kills it (log
``run/logs/<service>-supervisor.log``; the scheduler's keeps a warm standby and resumes its journal,
``run/journal.jsonl``); the pid recorded is the supervisor's, the leader of the process group that ``down`` stops.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from common.cluster.inventory import Board, Inventory, SshOptions
from common.cluster.keys import ClusterKeys, board_key_name, with_keys
from common.cluster.layout import (
    board_bytes,
    cluster_spec,
    layer_ranges,
    memory_problems,
    ports_of,
    service_bytes,
)
from common.cluster.machine_defaults import thread_environment
from common.cluster.partition import MIB, human_bytes, layer_costs
from common.cluster.settings import ClusterSpec
from common.cluster.slices import SliceFolder, build_slice, service_tensors
from common.models.dtypes import dtype_bytes
from services.client import ClusterUnavailable
from services.cluster.board_agent import flowring_version
from services.cluster.head_drafter import head_costs, head_drafter_parts, resolve_head
from services.cluster.ssh import SSH_FAILED, Result, Ssh, agent, detached
from services.launcher import LaunchError, client_for, supervised, wait_ready
from services.run_folder import RunFolder

PROBE_TIMEOUT_S = 60.0  # a Python start on a small, busy board
COMMAND_TIMEOUT_S = 30.0
COPY_TIMEOUT_S = 3600.0
ALIVE_CHECK_INTERVAL_S = 5.0
STOP_GRACE_S = 10.0
SCHEDULER_STANDBY_S = 5.0  # the scheduler's standby starts this long after it (its imports beside the others')
LOG_TAIL_LINES = 20
# Makes the folder $1 (and its parents) and leaves it to its owner alone.
PRIVATE_FOLDER = 'mkdir -p "$1" && chmod 700 "$1"'
T = TypeVar("T")


@dataclass(frozen=True)
class ServicePlan:
    """One service: its board and the slices it loads (the scheduler: the two models' tokenizers)."""

    name: str
    board: Board
    parts: tuple[SliceFolder, ...]

    @property
    def cluster_file(self) -> str:
        return posixpath.join(self.board.home, "run", f"{self.name}.cluster.json")

    @property
    def log(self) -> str:
        return posixpath.join(self.board.home, "run", "logs", f"{self.name}.log")

    @property
    def supervisor_log(self) -> str:
        return posixpath.join(self.board.home, "run", "logs", f"{self.name}-supervisor.log")

    @property
    def output(self) -> str:
        return posixpath.join(self.board.home, "run", "logs", f"{self.name}.out")

    @property
    def key_file(self) -> str:
        return board_key_file(self.board)


def board_key_file(board: Board) -> str:
    """Where ``board`` keeps its own CURVE key pair."""
    return posixpath.join(board.home, "keys", f"{board_key_name(board.name)}.key_secret")


@dataclass(frozen=True)
class Bringup:
    """Everything decided on the head before any board is touched."""

    inventory: Inventory
    spec: ClusterSpec  # model paths on the head; CURVE with the head's client key pair
    services: tuple[ServicePlan, ...]
    board_need_bytes: dict[str, int]
    keys: ClusterKeys

    def on(self, board: str) -> list[ServicePlan]:
        return [s for s in self.services if s.board.name == board]


def plan(inv: Inventory, keys: ClusterKeys) -> Bringup:
    """Resolve the models on the head, split the layers, check every board's memory budget, secure the sockets."""
    from common.models.modeling.tokenizer import check_same_tokenizer
    from common.models.store import resolve

    base_dir = resolve(inv.base)
    base_costs = layer_costs(base_dir, dtype_bytes(inv.dtype))
    head_dir = resolve_head(inv.draft_head, base_dir) if inv.draft_head else None
    if head_dir is None:
        draft_dir = resolve(inv.draft)
        check_same_tokenizer(base_dir, draft_dir)
        draft_costs = layer_costs(draft_dir, dtype_bytes(inv.dtype))
    else:
        draft_costs = head_costs(head_dir, base_costs)
    ranges = layer_ranges(inv, base_costs, draft_costs)
    needs = board_bytes(inv, service_bytes(inv, ranges, base_costs, draft_costs))
    problems = memory_problems(inv, needs)
    if problems:
        raise LaunchError("\n".join(problems))
    spec = cluster_spec(inv, str(base_dir), "" if head_dir else str(draft_dir), ranges)
    spec = with_keys(dataclasses.replace(spec, draft_head=str(head_dir or "")), dict(inv.services()), keys)
    services = tuple(ServicePlan(name, inv.board(board), ()) for name, board in inv.services())
    return Bringup(inv, spec, services, needs, keys)


def build_slices(bringup: Bringup, store: Path) -> Bringup:
    """Build (or find) every service's slice in the head's ``store``."""
    from common.models.modeling import load_model_spec
    from common.models.modeling.loader import checkpoint_tensor_names

    spec, dtype = bringup.spec, bringup.inventory.dtype
    base_dir = Path(spec.base)
    base_names = checkpoint_tensor_names(base_dir)
    tied = load_model_spec(base_dir).tie_word_embeddings
    parts: dict[str, tuple[SliceFolder, ...]] = {
        "scheduler": (build_slice(base_dir, (), dtype, store),),
        "verifier": (build_slice(base_dir, service_tensors("verifier", base_names, tied=tied), dtype, store),),
    }
    if spec.draft_head:  # the base's embedding (and lm_head) as stored, then the head's folder
        parts["drafter"] = head_drafter_parts(base_dir, Path(spec.draft_head), store)
    else:
        draft_dir = Path(spec.draft)
        parts["scheduler"] += (build_slice(draft_dir, (), dtype, store),)
        parts["drafter"] = (build_slice(draft_dir, service_tensors("drafter", checkpoint_tensor_names(draft_dir)),
                                        dtype, store),)
    for i, place in enumerate(spec.stages):
        tensors = service_tensors(place.name, base_names, layers=place.layers, first_stage=i == 0)
        parts[place.name] = (build_slice(base_dir, tensors, dtype, store),)
    services = tuple(dataclasses.replace(s, parts=parts[s.name]) for s in bringup.services)
    return dataclasses.replace(bringup, services=services)


def service_spec(bringup: Bringup, service: ServicePlan) -> ClusterSpec:
    """The cluster file ``service`` reads on its board: every real address, model paths to its own slices, its
    board's key pair."""
    folders = [posixpath.join(service.board.home, "slices", part.digest) for part in service.parts]
    curve = dataclasses.replace(bringup.spec.curve, key_file=service.key_file)
    if bringup.spec.draft_head:  # every service knows a head drafts; the drafter reads it from its second folder
        head = folders[-1] if service.name == "drafter" else bringup.spec.draft_head
        return dataclasses.replace(bringup.spec, base=folders[0], draft="", draft_head=head, curve=curve)
    # Only the scheduler reads both models (their tokenizers); every other service reads one folder.
    return dataclasses.replace(bringup.spec, base=folders[0], draft=folders[-1], curve=curve)


def preflight(bringup: Bringup, ssh: Ssh) -> None:
    """Probe every board; raise with one line per failing board."""
    version = flowring_version()
    boards = {s.board.name: s.board for s in bringup.services}

    def check(board: Board) -> str:
        ports = [p for s in bringup.on(board.name) for p in ports_of(bringup.spec, s.name)]
        result = ssh.run(board, agent(board, "probe", "--address", board.address, "--ports", *map(str, ports)),
                         timeout_s=PROBE_TIMEOUT_S)
        where = f"board {board.name} ({board.user}@{board.address}:{board.ssh_port})"
        if result.returncode == SSH_FAILED:
            return f"{where}: unreachable: {result.reason}"
        if result.returncode != 0:
            return f"{where}: cannot run flowring there ({board.python} in {board.workdir}): {result.reason}"
        return _probe_problems(where, json.loads(result.stdout), version, bringup.board_need_bytes[board.name])

    problems = [line for line in _parallel(check, boards.values()) if line]
    if problems:
        raise LaunchError("\n".join(problems) + "\nnothing was started")


def _probe_problems(where: str, probe: dict[str, Any], version: str, need_bytes: int) -> str:
    problems = []
    if probe["flowring"] != version:
        problems.append(f"flowring {probe['flowring']} there, {version} here")
    if not probe["torch"]:
        problems.append(f"torch is missing for Python {probe['python']}")
    if probe["mem_available_mib"] * MIB < need_bytes:
        problems.append(f"needs {human_bytes(need_bytes)} for its services, {probe['mem_available_mib']} MiB available")
    if probe["busy_ports"]:
        problems.append(f"port(s) {', '.join(map(str, probe['busy_ports']))} already in use")
    return f"{where}: {'; '.join(problems)}" if problems else ""


def ship(bringup: Bringup, ssh: Ssh, staging: Path) -> dict[str, int]:
    """Copy every slice a board lacks, its key pair, then every service's cluster file; return weight bytes
    shipped per board."""
    staging.mkdir(parents=True, exist_ok=True)
    for service in bringup.services:
        (staging / f"{service.name}.cluster.json").write_text(service_spec(bringup, service).to_json())

    def send(board: Board) -> int:
        services = bringup.on(board.name)
        wanted = sorted({p.digest for s in services for p in s.parts})
        result = _must(ssh.run(board, agent(board, "have", "--slices", posixpath.join(board.home, "slices"),
                                            "--want", *wanted), timeout_s=COMMAND_TIMEOUT_S), board,
                       "listing its slices")
        have = set(json.loads(result.stdout)["have"])
        missing = {p.digest: p for s in services for p in s.parts if p.digest not in have}
        for part in missing.values():
            final = posixpath.join(board.home, "slices", part.digest)
            partial = final + ".partial"
            _must(ssh.run(board, ["sh", "-c", 'rm -rf "$1" && mkdir -p "$1"', "flowring", partial],
                          timeout_s=COMMAND_TIMEOUT_S), board, "preparing the slice folder")
            _must(ssh.copy(board, sorted(part.path.iterdir()), partial, timeout_s=COPY_TIMEOUT_S), board,
                  "copying a slice")
            _must(ssh.run(board, ["mv", "-T", partial, final], timeout_s=COMMAND_TIMEOUT_S), board,
                  "storing a slice")
        _ship_key(bringup.keys, board, ssh)
        run = posixpath.join(board.home, "run")
        _must(ssh.run(board, ["mkdir", "-p", run], timeout_s=COMMAND_TIMEOUT_S), board, "creating the run folder")
        _must(ssh.copy(board, [staging / f"{s.name}.cluster.json" for s in services], run,
                       timeout_s=COMMAND_TIMEOUT_S), board, "copying the cluster files")
        return sum(p.size_bytes for p in missing.values())

    boards = {s.board.name: s.board for s in bringup.services}
    return dict(zip(boards, _parallel(send, boards.values()), strict=True))


def _ship_key(keys: ClusterKeys, board: Board, ssh: Ssh) -> None:
    """Copy ``board``'s own key pair (never another's) into its keys folder, readable by its user only.

    The secret travels inside scp's encrypted channel; only file paths appear on command lines.
    """
    target = board_key_file(board)
    folder = posixpath.dirname(target)
    _must(ssh.run(board, ["sh", "-c", PRIVATE_FOLDER, "flowring", folder], timeout_s=COMMAND_TIMEOUT_S), board,
          "preparing the keys folder")
    _must(ssh.copy(board, [keys.secret_file(board_key_name(board.name))], folder, timeout_s=COMMAND_TIMEOUT_S),
          board, "copying its key pair")
    _must(ssh.run(board, ["chmod", "600", target], timeout_s=COMMAND_TIMEOUT_S), board, "protecting its key pair")


def start(bringup: Bringup, ssh: Ssh, run_dir: Path, *, log_level: str = "info") -> dict[str, int]:
    """Start every service detached on its board, record the pids, wait until all are ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    RunFolder(run_dir).cluster.write_text(bringup.spec.to_json())
    pids: dict[str, int] = {}
    recording = threading.Lock()
    ring_services = Counter(s.board.name for s in bringup.services if s.name != "scheduler")

    def start_on(board: Board) -> None:
        """This board's services, one after another; the boards at once (each start is an SSH round trip)."""
        for service in bringup.on(board.name):
            argv = [board.python, "-m", "services.run", "--cluster", service.cluster_file, "--service",
                    service.name, "--log-level", log_level, "--log-file", service.log]
            # The same supervisor as a local cluster's restarts a killed service; the scheduler's keeps a warm
            # standby that takes over at once and resumes the journal (services/scheduler/journal.py).
            standby = SCHEDULER_STANDBY_S if service.name == "scheduler" else None
            argv = supervised(service.name, argv, board.python, service.supervisor_log, log_level, standby)
            # Ring services sharing a board's cores: OpenMP threads that sleep while they wait (machine_defaults).
            own_cores = ring_services[board.name] < 2 or bool(bringup.spec.placement(service.name).cpus)
            started = detached(board, service.output, argv, thread_environment(own_cores, {}))
            result = _must(ssh.run(board, started, timeout_s=COMMAND_TIMEOUT_S), board, f"starting {service.name}")
            with recording:  # every started pid is recorded before anything can fail: `down` finds it
                pids[service.name] = _pid(result, board, service.name)
                _record(run_dir, bringup, pids)

    try:
        _parallel(start_on, {s.board.name: s.board for s in bringup.services}.values())
        wait_ready(bringup.spec, _BoardProcesses(bringup, ssh, pids))
    except LaunchError as exc:
        if pids:
            down(run_dir, ssh_for=lambda _: ssh)
        raise LaunchError(f"{exc} (every started service was stopped)") from exc
    return pids


def down(run_dir: Path, *, ssh_for: Callable[[SshOptions], Ssh] = Ssh) -> list[str]:
    """Stop every service on every board recorded in ``run_dir``; check none is left. Returns those stopped."""
    record_path = RunFolder(run_dir).boards
    record = json.loads(record_path.read_text())
    ssh = ssh_for(SshOptions(**record["ssh"]))
    boards = {b["name"]: Board(**b) for b in record["boards"]}
    services = record["services"]
    try:
        with client_for(ClusterSpec.load(RunFolder(run_dir).cluster), 2.0) as client:
            client.shutdown(timeout_s=2.0)
    except (ClusterUnavailable, OSError, ValueError):
        pass  # scheduler already gone or never up: the board agents stop whatever is left

    def stop_on(board: Board) -> str:
        pids = [str(s["pid"]) for s in services if s["board"] == board.name]
        result = ssh.run(board, agent(board, "stop", "--grace-s", str(STOP_GRACE_S), "--pids", *pids),
                         timeout_s=STOP_GRACE_S + 30.0)
        if result.returncode != 0:
            return f"board {board.name}: cannot stop its services: {result.reason}"
        left = json.loads(result.stdout)["left"]
        return f"board {board.name}: processes {left} would not stop" if left else ""

    used = {s["board"] for s in services}
    problems = [line for line in _parallel(stop_on, [boards[n] for n in sorted(used)]) if line]
    if problems:
        raise LaunchError("\n".join(problems))
    record_path.unlink()
    RunFolder(run_dir).cluster.unlink(missing_ok=True)
    return sorted(s["name"] for s in services)


def _record(run_dir: Path, bringup: Bringup, pids: dict[str, int]) -> None:
    services = [{"name": s.name, "board": s.board.name, "pid": pids[s.name], "log": s.log}
                for s in bringup.services if s.name in pids]
    boards = {s.board.name: dataclasses.asdict(s.board) for s in bringup.services}
    record = {"ssh": dataclasses.asdict(bringup.inventory.ssh), "boards": list(boards.values()),
              "services": services}
    RunFolder(run_dir).boards.write_text(json.dumps(record, indent=2))


@dataclass(frozen=True)
class _BoardProcesses:
    """Services started on boards over SSH, as the one ready-wait (services.launcher.wait_ready) sees them."""

    bringup: Bringup
    ssh: Ssh
    pids: dict[str, int]
    check_interval_s: float = ALIVE_CHECK_INTERVAL_S
    logs: str = "run/logs/ under each board's home"

    def check_started(self) -> None:
        _check_alive(self.bringup, self.ssh, self.pids)


def _check_alive(bringup: Bringup, ssh: Ssh, pids: dict[str, int]) -> None:
    for board in {s.board.name: s.board for s in bringup.services}.values():
        mine = {s.name: pids[s.name] for s in bringup.on(board.name)}
        result = _must(ssh.run(board, agent(board, "alive", "--pids", *map(str, mine.values())),
                               timeout_s=COMMAND_TIMEOUT_S), board, "checking its services")
        running = set(json.loads(result.stdout)["alive"])
        for service in bringup.on(board.name):
            if mine[service.name] not in running:
                last: list[str] = []
                for path in (service.output, service.log):  # a crash prints to .out; an error it logged is in .log
                    tail = ssh.run(board, ["tail", "-n", str(LOG_TAIL_LINES), path], timeout_s=COMMAND_TIMEOUT_S)
                    last = last or [ln for ln in tail.stdout.splitlines() if ln.strip()][-1:]
                last = last or ["no output"]
                raise LaunchError(f"{service.name} on board {board.name} exited while starting: {last[0][-300:]}")


def _must(result: Result, board: Board, doing: str) -> Result:
    if result.returncode != 0:
        raise LaunchError(f"board {board.name}: {doing} failed: {result.reason}")
    return result


def _pid(result: Result, board: Board, service: str) -> int:
    """The pid the detached start printed last."""
    words = result.stdout.split()
    if not words or not words[-1].isdigit():
        raise LaunchError(f"board {board.name}: starting {service} printed no pid: {result.stdout[-200:]!r}")
    return int(words[-1])


def _parallel(work: Callable[[Board], T], boards: Iterable[Board]) -> list[T]:
    boards = list(boards)
    with ThreadPoolExecutor(max_workers=max(1, len(boards))) as pool:
        return list(pool.map(work, boards))
