"""The cluster inventory: a TOML file naming the boards, which service runs on which, models and settings.

Pure: :func:`parse_inventory` turns parsed TOML into a frozen :class:`Inventory` or raises
:class:`InventoryError` with one line per problem. See ``infra/lan.example.toml`` for every field.

Vocabulary: a *board* is a machine reached over SSH; the *head* is where ``flowring up`` runs (it
holds the models and ships each board its slice). A board's ``home`` is its ``FLOWRING_HOME`` (slices
under ``slices/``, logs under ``run/logs/``); ``workdir`` is the flowring checkout there.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cluster.settings import Timeouts
from common.models.devices import DeviceError, parse_device
from common.models.dtypes import MODEL_DTYPES
from common.speculation.modes import DraftSettings
from common.speculation.tree_options import TreeSettingsError, tree_settings

SHIPPED_HEAD = "shipped"  # models.draft_head: the head shipped with flowring for the base (by its fingerprint)
TOP_LEVEL = frozenset({"models", "placement", "ports", "resources", "tree", "ssh", "timeouts", "boards"})
BOARD_FIELDS = frozenset({"name", "address", "user", "ssh_port", "cores", "memory_mib", "speed", "python",
                          "workdir", "home", "device"})
# Board paths travel to ssh and scp; plain absolute paths keep them unambiguous for both.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")


class InventoryError(ValueError):
    """The cluster file is invalid; the message has one line per problem."""


@dataclass(frozen=True)
class Board:
    """A machine of the cluster, reached as ``user@address`` on ``ssh_port``."""

    name: str
    address: str
    user: str
    cores: int
    memory_mib: int  # what flowring may use there
    python: str  # absolute path of the Python that has flowring's dependencies (e.g. a venv's bin/python)
    workdir: str  # the flowring checkout on the board
    home: str  # FLOWRING_HOME on the board
    ssh_port: int = 22
    speed: float = 0.0  # layer-forwards per second (`flowring plan --measure`); 0: use `cores`
    device: str = ""  # torch device of the services on this board (cpu, cuda, cuda:N); "": models.device

    @property
    def relative_speed(self) -> float:
        """Speed the partitioner uses: the measured one, else the core count."""
        return self.speed or float(self.cores)


@dataclass(frozen=True)
class SshOptions:
    """How the head's OpenSSH client reaches the boards."""

    identity: str = ""  # private key file; empty: ssh's own default
    known_hosts: str = ""  # known_hosts file; empty: ssh's own default
    connect_timeout_s: float = 5.0


@dataclass(frozen=True)
class Inventory:
    """A validated cluster file."""

    boards: tuple[Board, ...]
    base: str  # catalog name or path on the head
    draft: str  # the draft model ("" when a head drafts)
    scheduler: str  # board names
    drafter: str
    verifier: str
    stages: tuple[str, ...]
    layers: str = "auto"  # or explicit ranges, e.g. "0-10,10-20,20-28"
    dtype: str = "bfloat16"
    device: str = "cpu"
    threads: int = 0
    base_port: int = 7700  # each board's services take consecutive ports from here
    overhead_mib: float = 300.0  # fixed memory per service process
    kv_tokens: int = 2048  # KV-cache rows every model slice must have room for
    tree: DraftSettings = field(default_factory=DraftSettings)
    ssh: SshOptions = field(default_factory=SshOptions)
    timeouts: Timeouts = field(default_factory=Timeouts)
    draft_head: str = ""  # a head drafts instead of a draft model: SHIPPED_HEAD, or a head folder on the head

    def board(self, name: str) -> Board:
        for board in self.boards:
            if board.name == name:
                return board
        raise KeyError(f"no board named {name!r}")

    def services(self) -> list[tuple[str, str]]:
        """``(service, board)`` pairs, scheduler first, then the ring in order."""
        stages = [(f"stage-{i + 1}", board) for i, board in enumerate(self.stages)]
        return [("scheduler", self.scheduler), ("drafter", self.drafter), *stages, ("verifier", self.verifier)]


def load_inventory(path: Path) -> Inventory:
    """Read and validate a TOML cluster file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read cluster file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"cluster file {path} is not valid TOML: {exc}") from exc
    return parse_inventory(data)


def parse_inventory(data: Mapping[str, Any]) -> Inventory:
    """Validate parsed TOML; every problem found is one line of the raised :class:`InventoryError`."""
    problems: list[str] = []
    for key in sorted(set(data) - TOP_LEVEL):
        problems.append(f"unknown section [{key}]; known: {', '.join(sorted(TOP_LEVEL))}")
    boards = _boards(data.get("boards"), problems)
    models, placement = _table(data, "models", problems), _table(data, "placement", problems)
    ports, resources = _table(data, "ports", problems), _table(data, "resources", problems)
    _known(models, "models", {"base", "draft", "draft_head", "dtype", "device"}, problems)
    _known(placement, "placement", {"scheduler", "drafter", "verifier", "stages", "layers"}, problems)
    _known(ports, "ports", {"base"}, problems)
    _known(resources, "resources", {"threads", "overhead_mib", "kv_tokens"}, problems)
    names = _board_names(data.get("boards"))
    fields: dict[str, Any] = {
        "base": _text(models, "models.base", problems),
        **_drafter(models, problems),
        "dtype": _choice(models, "dtype", MODEL_DTYPES, "bfloat16", problems),
        "device": _device(models, "device", "cpu", "models.device", problems),
        "threads": _integer(resources, "threads", 0, 0, 1024, problems, "resources"),
        "base_port": _integer(ports, "base", 7700, 1024, 65000, problems, "ports"),
        "overhead_mib": _number(resources, "overhead_mib", 300.0, problems, "resources"),
        "kv_tokens": _integer(resources, "kv_tokens", 2048, 1, 1 << 24, problems, "resources"),
        "layers": _layers(placement.get("layers", "auto"), problems),
    }
    for role in ("scheduler", "drafter", "verifier"):
        fields[role] = _board_ref(placement.get(role), f"placement.{role}", names, problems)
    fields["stages"] = _stages(placement.get("stages"), names, problems)
    measured = {b.name for b in boards if b.speed} & set(fields["stages"])
    if measured and measured != set(fields["stages"]) - {""}:
        problems.append("speed must be given on every stage board or on none (measured speeds and core counts "
                        "do not compare)")
    fields["tree"] = _tree(data, problems)
    fields["ssh"] = _dataclass(SshOptions, data, "ssh", problems)
    fields["timeouts"] = _dataclass(Timeouts, data, "timeouts", problems)
    if problems:
        raise InventoryError("\n".join(problems))
    return Inventory(boards=tuple(boards), **fields)


def _boards(raw: object, problems: list[str]) -> list[Board]:
    if not isinstance(raw, list) or not raw:
        problems.append("no boards: add at least one [[boards]] table")
        return []
    boards: list[Board] = []
    for i, entry in enumerate(raw):
        label = f"boards[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{label} must be a table")
            continue
        name = entry.get("name")
        if isinstance(name, str) and _SAFE_NAME.fullmatch(name):
            label = f"board {name}"
        else:
            problems.append(f"{label}: name must be letters, digits, '.', '_' or '-', got {name!r}")
        before = len(problems)
        _known(entry, label, BOARD_FIELDS, problems)
        address = entry.get("address")
        if not isinstance(address, str) or not _SAFE_NAME.fullmatch(address):
            problems.append(f"{label}: address must be a host name or IP address, got {address!r}")
        user = entry.get("user")
        if not isinstance(user, str) or not _SAFE_USER.fullmatch(user):
            problems.append(f"{label}: user must be a login name, got {user!r}")
        for key in ("python", "workdir", "home"):
            value = entry.get(key)
            if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value):
                problems.append(f"{label}: {key} must be an absolute path of letters, digits and ._/+-, got {value!r}")
        ssh_port = _integer(entry, "ssh_port", 22, 1, 65535, problems, label)
        cores = _integer(entry, "cores", None, 1, 4096, problems, label)
        memory_mib = _integer(entry, "memory_mib", None, 1, 1 << 30, problems, label)
        speed = _number(entry, "speed", 0.0, problems, label)
        device = _device(entry, "device", "", f"{label}: device", problems)
        if any(b.name == name for b in boards):
            problems.append(f"{label} appears twice")
        # A bad name is counted before `before`: any problem at all fails the whole file (see `load`).
        if len(problems) == before and isinstance(name, str) and isinstance(address, str) and isinstance(user, str):
            boards.append(Board(name=name, address=address, user=user, python=entry["python"],
                                workdir=entry["workdir"], home=entry["home"], ssh_port=ssh_port, cores=cores,
                                memory_mib=memory_mib, speed=speed, device=device))
    return boards


def _board_names(raw: object) -> set[str]:
    """Every board name given, valid board or not, so that placement does not report a board twice."""
    entries = raw if isinstance(raw, list) else []
    return {e["name"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("name"), str)}


def _table(data: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        problems.append(f"[{key}] must be a table")
        return {}
    return value


def _known(table: Mapping[str, Any], label: str, known: set[str] | frozenset[str], problems: list[str]) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        problems.append(f"{label}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _text(table: Mapping[str, Any], label: str, problems: list[str]) -> str:
    key = label.rsplit(".", 1)[-1]
    value = table.get(key)
    if not isinstance(value, str) or not value:
        problems.append(f"{label} must name a model (catalog name or path on the head)")
        return ""
    return value


def _drafter(models: Mapping[str, Any], problems: list[str]) -> dict[str, str]:
    """``models.draft`` (a draft model) or ``models.draft_head`` (a head: ``shipped`` or a folder), one of them."""
    head = models.get("draft_head", "")
    if not isinstance(head, str):
        problems.append("models.draft_head must be \"shipped\" (the head shipped for the base) or a head folder")
        head = ""
    if head and "draft" in models:
        problems.append("models: give draft (a draft model) or draft_head (a head), not both")
        return {"draft": "", "draft_head": head}
    if head:
        return {"draft": "", "draft_head": head}
    return {"draft": _text(models, "models.draft", problems), "draft_head": ""}


def _choice(table: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str,
            problems: list[str]) -> str:
    value = table.get(key, default)
    if value not in choices:
        problems.append(f"models.{key} must be one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def _device(table: Mapping[str, Any], key: str, default: str, label: str, problems: list[str]) -> str:
    value = table.get(key, default)
    if value == default:
        return default
    try:
        return parse_device(value) if isinstance(value, str) else parse_device(repr(value))
    except DeviceError as exc:
        problems.append(f"{label}: {exc}")
        return default


def _integer(table: Mapping[str, Any], key: str, default: int | None, low: int, high: int,
             problems: list[str], label: str) -> int:
    value = table.get(key, default)
    name = f"{label}.{key}" if label in ("ports", "resources") else f"{label}: {key}"
    if value is None:
        problems.append(f"{name} is missing")
        return low
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.append(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        return low
    return value


def _number(table: Mapping[str, Any], key: str, default: float, problems: list[str], label: str) -> float:
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        name = f"{label}.{key}" if label == "resources" else f"{label}: {key}"
        problems.append(f"{name} must be a non-negative number, got {value!r}")
        return default
    return float(value)


def _layers(value: object, problems: list[str]) -> str:
    if value == "auto" or (isinstance(value, str) and re.fullmatch(r"\d+[-:]\d+(,\d+[-:]\d+)*", value)):
        return value
    problems.append(f"placement.layers must be \"auto\" or ranges such as \"0-10,10-20\", got {value!r}")
    return "auto"


def _board_ref(value: object, label: str, names: set[str], problems: list[str]) -> str:
    if not isinstance(value, str) or value not in names:
        problems.append(f"{label} must name a board ({', '.join(sorted(names)) or 'none defined'}), got {value!r}")
        return ""
    return value


def _stages(value: object, names: set[str], problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        problems.append("placement.stages must list one board per pipeline stage, in order")
        return ()
    stages = tuple(_board_ref(v, f"placement.stages[{i}]", names, problems) for i, v in enumerate(value))
    repeated = sorted({s for s in stages if s and stages.count(s) > 1})
    if repeated:
        problems.append(f"placement.stages: board {repeated[0]} holds two stages; give each stage its own board")
    return stages


def _tree(data: Mapping[str, Any], problems: list[str]) -> DraftSettings:
    """The [tree] table, read by the same rules as ``--tree key=value`` (common.speculation.tree_options)."""
    try:
        return tree_settings(_table(data, "tree", problems))
    except TreeSettingsError as exc:
        problems.extend(f"[tree]: {line}" for line in str(exc).splitlines())
        return DraftSettings()


def _dataclass(cls: type, data: Mapping[str, Any], key: str, problems: list[str]) -> Any:
    table = _table(data, key, problems)
    known = {f.name: f for f in dataclasses.fields(cls)}
    _known(table, f"[{key}]", set(known), problems)
    values = {}
    for name, value in table.items():
        if name not in known:
            continue
        expected = type(getattr(cls(), name))
        ok = isinstance(value, expected) and not isinstance(value, bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            problems.append(f"{key}.{name} must be a {expected.__name__}, got {value!r}")
            continue
        values[name] = value
    return cls(**values)
