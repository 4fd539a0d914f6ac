"""Commands and file copies on boards through the OpenSSH client (``ssh`` and ``scp`` subprocesses).

Why OpenSSH rather than a library (asyncssh, paramiko, fabric): it is already installed on every head
and board, and it honours the user's ``~/.ssh/config``, agent, keys and ``known_hosts`` exactly as a
hand-typed ``ssh`` does, so a board the user can reach by hand is reachable here, with no extra
dependency or second implementation of host-key checking to trust.

Safety: subprocesses take argument lists (no local shell); the remote command is ``shlex.join`` of an
argument list, so the board's login shell splits it back into exactly those arguments. Scripts that
need shell syntax are constants taking their inputs as positional parameters (``sh -c SCRIPT ...``).
``BatchMode`` forbids password prompts; ``ConnectTimeout`` bounds an unreachable board.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.cluster.inventory import Board, SshOptions

SSH_FAILED = 255  # ssh's own exit status when it cannot connect or authenticate
# Runs "$@" inside the folder given as $1 (the board's flowring checkout).
IN_FOLDER = 'cd "$1" || exit 97; shift; exec "$@"'
# Starts "$@" in the folder $2 in its own session, detached, output to the log file $1; prints its pid.
DETACHED = ('log=$1; cd "$2" || exit 97; shift 2; mkdir -p "$(dirname "$log")" || exit 98; '
            'setsid nohup "$@" >"$log" 2>&1 </dev/null & echo $!')
# Prints the file $1 from line $2 on and follows it (across truncation) until this command's stdin closes:
# sshd sends no signal when the client goes, so the end of stdin is what stops the remote tail.
FOLLOW = 'tail -n "+$2" -F -- "$1" 2>/dev/null & t=$!; cat >/dev/null; kill "$t"'


class RemoteError(RuntimeError):
    """A command on a board failed; the message names the board and says why in one line."""


@dataclass(frozen=True)
class Result:
    """What a remote command returned."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def reason(self) -> str:
        """The last line of stderr (ssh's own message when it could not connect)."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


class Ssh:
    """The OpenSSH client with one inventory's options."""

    def __init__(self, options: SshOptions, *, ssh: str = "ssh", scp: str = "scp") -> None:
        self.options = options
        self.ssh, self.scp = ssh, scp

    def common_options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(self.options.connect_timeout_s))}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if self.options.identity:
            opts += ["-o", f"IdentityFile={Path(self.options.identity).expanduser()}", "-o", "IdentitiesOnly=yes"]
        if self.options.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={Path(self.options.known_hosts).expanduser()}"]
        return opts

    def command(self, board: Board, argv: Sequence[str]) -> list[str]:
        """The local argument list that runs ``argv`` on ``board``."""
        return [self.ssh, *self.common_options(), "-p", str(board.ssh_port), "-l", board.user, board.address,
                "--", shlex.join(argv)]

    def run(self, board: Board, argv: Sequence[str], *, timeout_s: float) -> Result:
        """Run ``argv`` on ``board``; a hung connection is killed after ``timeout_s``."""
        try:
            done = subprocess.run(self.command(board, argv), capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return Result(SSH_FAILED, "", f"no answer within {timeout_s:.0f} s")
        return Result(done.returncode, done.stdout, done.stderr)

    def open(self, board: Board, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start ``argv`` on ``board`` and return at once; stdin, stdout and stderr are pipes. In its own
        session, so a terminal's Ctrl-C reaches only the caller, which ends it by closing its stdin."""
        return subprocess.Popen(self.command(board, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                start_new_session=True)

    def copy(self, board: Board, files: Sequence[Path], folder: str, *, timeout_s: float) -> Result:
        """Copy local ``files`` into the existing ``folder`` on ``board``."""
        argv = [self.scp, *self.common_options(), "-q", "-P", str(board.ssh_port),
                *(str(f) for f in files), f"{board.user}@{board.address}:{folder}/"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return Result(SSH_FAILED, "", f"copy not finished within {timeout_s:.0f} s")
        return Result(done.returncode, done.stdout, done.stderr)


def in_checkout(board: Board, argv: Sequence[str]) -> list[str]:
    """``argv`` run in the board's flowring checkout with its ``FLOWRING_HOME`` (the checkout's code wins)."""
    return ["sh", "-c", IN_FOLDER, "flowring", board.workdir, *_env(board), *argv]


def detached(board: Board, log: str, argv: Sequence[str], extra_env: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` started detached in the board's checkout, output to ``log``; the command prints its pid.

    ``extra_env``: more environment variables for it (names and values from the code, never from input).
    """
    added = [f"{name}={value}" for name, value in sorted((extra_env or {}).items())]
    return ["sh", "-c", DETACHED, "flowring", log, board.workdir, *_env(board), *added, *argv]


def follow(path: str, first_line: int) -> list[str]:
    """``tail -F`` of ``path`` from line ``first_line`` (1: the whole file) until the command's stdin closes."""
    return ["sh", "-c", FOLLOW, "flowring", path, str(first_line)]


def agent(board: Board, *args: str) -> list[str]:
    """The board agent (``services.cluster.board_agent``) with ``args``, under the board's Python."""
    return in_checkout(board, [board.python, "-m", "services.cluster.board_agent", *args])


def _env(board: Board) -> list[str]:
    return ["env", f"PYTHONPATH={board.workdir}", f"FLOWRING_HOME={board.home}"]
