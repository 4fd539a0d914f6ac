"""Reading the services' JSON log files back: parse, filter, merge by time, render for a terminal.

Each service writes ``logs/NAME.log`` (rotated to ``NAME.log.1`` .. ``NAME.log.N``, oldest last),
one JSON object per line with ``ts`` (UTC ISO), ``level``, ``service`` and ``event``. A line that is
not JSON (a crash's traceback on stderr) is kept, attributed to the file's service and to the time of
the line before it.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEVELS = ("debug", "info", "warning", "error", "critical")
_PRETTY_SKIP = ("ts", "level", "service", "host", "event", "request_id")


@dataclass(frozen=True)
class LogLine:
    ts: str  # UTC ISO; sorts as text
    service: str
    level: str  # "" for a line that is not JSON
    raw: str  # the line as written, without its newline
    fields: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def request_id(self) -> str:
        return str(self.fields.get("request_id", ""))


@dataclass(frozen=True)
class LogFilter:
    service: str = ""
    request_id: str = ""
    level: str = ""  # this level and above

    def __call__(self, line: LogLine) -> bool:
        if self.service and line.service != self.service:
            return False
        if self.request_id and line.request_id != self.request_id:
            return False
        return not self.level or (line.level in LEVELS and LEVELS.index(line.level) >= LEVELS.index(self.level))


def parse(lines: Iterable[str], service: str, last_ts: str = "") -> Iterator[LogLine]:
    """One service's lines in file order; ``last_ts``: the time of the line before these (when following)."""
    for text in lines:
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("ts"), str):
            last_ts = entry["ts"]
            yield LogLine(last_ts, str(entry.get("service") or service), str(entry.get("level", "")), text, entry)
        else:
            yield LogLine(last_ts, service, "", text)


def service_files(log_dir: Path) -> dict[str, list[Path]]:
    """``service -> [oldest .. newest]`` files in ``log_dir``."""
    out: dict[str, list[Path]] = {}
    for path in sorted(log_dir.glob("*.log")):
        backups = sorted(log_dir.glob(f"{path.name}.*"), key=lambda p: -_backup_number(p))
        out[path.stem] = [p for p in backups if _backup_number(p) > 0] + [path]
    return out


def merged(log_dir: Path) -> Iterator[LogLine]:
    """Every service's lines, merged by timestamp (each file is already in time order)."""
    return merge(_read(paths, service) for service, paths in service_files(log_dir).items())


def merge(streams: Iterable[Iterable[LogLine]]) -> Iterator[LogLine]:
    """Streams each in time order (one per service), merged into one in time order."""
    return heapq.merge(*streams, key=lambda line: line.ts)


def render(line: LogLine) -> str:
    """One aligned, readable line: time, level, service, request, event, then the other fields."""
    if not line.fields:
        return f"{line.ts[11:23]:<12} {'':<7} {line.service:<10} {'':<6} {line.raw}"
    rest = " ".join(f"{k}={_short(v)}" for k, v in line.fields.items() if k not in _PRETTY_SKIP)
    return (f"{line.ts[11:23]:<12} {line.level:<7} {line.service:<10} {line.request_id:<6} "
            f"{line.fields.get('event', '')}{' ' + rest if rest else ''}")


class Follower:
    """Complete lines appended to the ``*.log`` files of a folder since the last poll (or creation)."""

    def __init__(self, log_dir: Path) -> None:
        self._dir = log_dir
        self._offsets = {path: path.stat().st_size for path in log_dir.glob("*.log")}  # start at today's ends

    def poll(self) -> list[LogLine]:
        out: list[LogLine] = []
        for path in sorted(self._dir.glob("*.log")):
            offset = self._offsets.get(path, 0)
            size = path.stat().st_size
            if size < offset:  # rotated: the file started over
                offset = 0
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(complete)
            out.extend(parse(complete.decode("utf-8", errors="replace").splitlines(), path.stem))
        return sorted(out, key=lambda line: line.ts)


class Reorder:
    """Lines from live streams put back in time order: each line is held ``hold_s`` after it arrives, so a
    line that travelled slower (from another board, over another connection) is still printed before it."""

    def __init__(self, hold_s: float) -> None:
        self._hold_s = hold_s
        self._held: list[tuple[float, LogLine]] = []  # (arrival time, line) in arrival order

    def add(self, lines: Iterable[LogLine], now: float) -> None:
        self._held.extend((now, line) for line in lines)

    def release(self, now: float) -> list[LogLine]:
        """The lines held long enough, with every held line not later than they, in time order."""
        due = [line.ts for arrived, line in self._held if arrived <= now - self._hold_s]
        if not due:
            return []
        cutoff = max(due)
        out = sorted((line for _, line in self._held if line.ts <= cutoff), key=lambda line: line.ts)
        self._held = [(arrived, line) for arrived, line in self._held if line.ts > cutoff]
        return out

    def flush(self) -> list[LogLine]:
        """Every held line, in time order."""
        out = sorted((line for _, line in self._held), key=lambda line: line.ts)
        self._held = []
        return out


def _read(paths: list[Path], service: str) -> Iterator[LogLine]:
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as f:
            yield from parse(f, service)


def _backup_number(path: Path) -> int:
    suffix = path.suffix.lstrip(".")
    return int(suffix) if suffix.isdigit() else 0


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
