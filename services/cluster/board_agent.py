"""What the head runs on a board over SSH: ``probe`` and ``have`` before starting, ``alive`` and ``stop`` after.

Each subcommand prints one JSON object on stdout. ``probe --address A --ports P...`` reports the
flowring version, Python and torch versions, available memory and which ports are taken on ``A``;
``have --slices DIR --want HASH...`` which slice hashes ``DIR`` holds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def flowring_version() -> str:
    """The version of this flowring checkout (its pyproject.toml), as compared between head and boards."""
    return tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def probe(address: str, ports: list[int]) -> dict:
    """Torch's version is read from its installed metadata, not by importing it: the import costs seconds of CPU
    on every board at every ``up`` (tens on a small one), and a torch that is installed but cannot load still
    stops ``up``, when its services start (their log's last line is the launch error)."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = ""
    return {
        "flowring": flowring_version(),
        "python": platform.python_version(),
        "torch": torch_version,
        "mem_available_mib": _mem_available_mib(),
        "busy_ports": [p for p in ports if not _port_free(address, p)],
    }


def have(slices: Path, want: list[str]) -> list[str]:
    """The wanted slice hashes the store folder ``slices`` holds."""
    return [digest for digest in want if (slices / digest).is_dir()]


def alive(pids: list[int]) -> list[int]:
    """The pids that are running (not gone, not zombies)."""
    return [pid for pid in pids if _running(pid)]


def stop(pids: list[int], grace_s: float) -> list[int]:
    """Give each pid's process group ``grace_s`` to exit, then SIGTERM, then SIGKILL; return any left."""
    deadline = time.monotonic() + grace_s
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive(pids):
            # Each service leads its own session (setsid), so its group holds its children too.
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.killpg(pid, sig)
        end = time.monotonic() + 3.0
        while alive(pids) and time.monotonic() < end:
            time.sleep(0.1)
    return alive(pids)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--address", required=True)
    p.add_argument("--ports", type=int, nargs="*", default=[])
    h = sub.add_parser("have")
    h.add_argument("--slices", type=Path, required=True)
    h.add_argument("--want", nargs="*", default=[])
    a = sub.add_parser("alive")
    a.add_argument("--pids", type=int, nargs="*", default=[])
    s = sub.add_parser("stop")
    s.add_argument("--pids", type=int, nargs="*", default=[])
    s.add_argument("--grace-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.command == "probe":
        answer = probe(args.address, args.ports)
    elif args.command == "have":
        answer = {"have": have(args.slices, args.want)}
    elif args.command == "alive":
        answer = {"alive": alive(args.pids)}
    else:
        answer = {"left": stop(args.pids, args.grace_s)}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
