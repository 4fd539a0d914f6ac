"""The services' log files on their boards, read and followed from the head over SSH.

``boards.json`` (written by ``up --cluster``) names each service's board and log file. :func:`fetch`
copies every file's complete lines (one ``cat`` per file, in parallel); :class:`Tails` follows them
(one ``ssh ... tail -F`` per file, starting after the lines already fetched, so nothing is printed
twice or lost) and hands over the lines as they arrive. Parsing, merging and reordering are logview's.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common.cluster.inventory import Board, SshOptions
from common.observability.logview import LogLine, merge, parse
from services.cluster.ssh import Ssh, follow
from services.run_folder import RunFolder

READ_TIMEOUT_S = 120.0  # a whole log file over a slow LAN
CLOSE_GRACE_S = 5.0  # a tail's ssh exits by itself once its stdin closes; killed after this long


@dataclass(frozen=True)
class ServiceLog:
    """Where one service logs: a file on its board."""

    service: str
    board: Board
    path: str

    @property
    def where(self) -> str:
        return f"board {self.board.name}: {self.service}'s log {self.path}"


@dataclass(frozen=True)
class LogCopy:
    """A log file's complete lines as read, or why it could not be read."""

    log: ServiceLog
    text: str  # complete lines only: a line still being written comes with the tail
    problem: str = ""

    @property
    def line_count(self) -> int:
        return self.text.count("\n")

    def lines(self) -> Iterator[LogLine]:
        return parse(self.text.splitlines(), self.log.service)


def recorded_logs(run_dir: Path) -> tuple[SshOptions, tuple[ServiceLog, ...]]:
    """The SSH options and every service's log, as ``up --cluster`` recorded them in ``run_dir``."""
    record = json.loads(RunFolder(run_dir).boards.read_text())
    boards = {b["name"]: Board(**b) for b in record["boards"]}
    logs = tuple(ServiceLog(s["name"], boards[s["board"]], s["log"]) for s in record["services"])
    return SshOptions(**record["ssh"]), logs


def fetch(ssh: Ssh, logs: Sequence[ServiceLog]) -> list[LogCopy]:
    """Every log's complete lines, read in parallel."""

    def read(log: ServiceLog) -> LogCopy:
        result = ssh.run(log.board, ["cat", "--", log.path], timeout_s=READ_TIMEOUT_S)
        if result.returncode != 0:
            return LogCopy(log, "", f"{log.where}: cannot read it: {result.reason}")
        return LogCopy(log, result.stdout[: result.stdout.rfind("\n") + 1])

    with ThreadPoolExecutor(max_workers=max(1, len(logs))) as pool:
        return list(pool.map(read, logs))


def merged(copies: Sequence[LogCopy]) -> Iterator[LogLine]:
    """The lines of every copy that was read, merged by time."""
    return merge(copy.lines() for copy in copies if not copy.problem)


class Tails:
    """One ``tail -F`` per log over SSH, each from the line after those in its copy; a context manager."""

    def __init__(self, ssh: Ssh, copies: Sequence[LogCopy]) -> None:
        self._arrived: queue.Queue[tuple[ServiceLog, str | None]] = queue.Queue()
        self._last_ts = {copy.log.service: _last_ts(copy) for copy in copies}
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._open = len(copies)  # tails whose end poll has not reported yet
        try:
            for copy in copies:
                proc = ssh.open(copy.log.board, follow(copy.log.path, copy.line_count + 1))
                self._procs[copy.log.service] = proc
                threading.Thread(target=self._pump, args=(copy.log, proc), daemon=True).start()
        except BaseException:  # Ctrl-C or no ssh while starting: end the tails already started
            self.close()
            raise

    def __enter__(self) -> Tails:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def following(self) -> int:
        """How many tails have not been reported ended by :meth:`poll`."""
        return self._open

    def poll(self, wait_s: float) -> tuple[list[LogLine], list[str]]:
        """Lines arrived within ``wait_s`` (each log's in its order), and one problem line per tail that ended."""
        arrived: dict[str, list[str]] = {}
        problems: list[str] = []
        with contextlib.suppress(queue.Empty):  # nothing arrived in time: an empty batch
            item = self._arrived.get(timeout=wait_s)
            while True:
                log, text = item
                if text is None:
                    self._open -= 1
                    problems.append(f"{log.where}: no longer followed: {self._end_reason(log)}")
                else:
                    arrived.setdefault(log.service, []).append(text)
                item = self._arrived.get_nowait()
        lines: list[LogLine] = []
        for service, texts in arrived.items():
            batch = list(parse(texts, service, self._last_ts[service]))
            if batch:
                self._last_ts[service] = batch[-1].ts
            lines.extend(batch)
        return lines, problems

    def close(self) -> None:
        """End every tail: closing its stdin stops the remote ``tail``; the ssh is killed if it lingers."""
        for proc in self._procs.values():
            with contextlib.suppress(OSError):  # already gone: its pipe is broken
                proc.stdin.close()  # type: ignore[union-attr]
        for proc in self._procs.values():
            try:
                proc.wait(timeout=CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _pump(self, log: ServiceLog, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            self._arrived.put((log, text))
        self._arrived.put((log, None))

    def _end_reason(self, log: ServiceLog) -> str:
        proc = self._procs[log.service]
        proc.wait()
        lines = [ln.strip() for ln in (proc.stderr.read() if proc.stderr else "").splitlines() if ln.strip()]
        return lines[-1] if lines else f"ssh exited with status {proc.returncode}"


def _last_ts(copy: LogCopy) -> str:
    """The time of the copy's last timed line (a tail's untimed first lines take it)."""
    for text in reversed(copy.text.splitlines()):
        line = next(parse([text], copy.log.service), None)
        if line is not None and line.ts:
            return line.ts
    return ""
