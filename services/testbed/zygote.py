"""A fork server for the tests' local clusters: the service runtime is imported once, every process forked.

Each service process of a local cluster (``python -m services.supervisor ... -- python -m services.run ...``)
imports torch, the cores and the tokenizer's library before it does anything: seconds of CPU each, and a ring
is four to seven services plus their supervisors. A zygote (``python -m services.testbed.zygote SOCKET``)
imports all of that once, then forks a process for each command it is handed, as ``exec`` would have
started it: its own session, the working directory, the environment and stdout/stderr of the launcher's
request, default signal handlers, fresh random seeds, then ``python -m MODULE ARGS`` run as ``__main__``.
In a forked supervisor the service child is forked too (``subprocess.Popen`` of a ``python -m`` command
forks there), so a SIGKILLed service is restarted by its supervisor as before, and the ring stays one OS
process per service talking over real sockets. Anything that is not ``python -m`` is exec'd.

Libraries read some variables (``OMP_WAIT_POLICY``, ``PYTHONPATH``) when they load, so each distinct
environment gets its own zygote; only the variables read at run time (``FLOWRING_*``, pytest's per-test
ones) may differ between the processes one zygote forks. The zygote must stay fork-safe: it imports
modules and opens nothing else (no zmq context, no thread of its own; numpy's OpenBLAS thread parks
itself at fork). ``Zygotes.spawn`` has ``services.launcher._spawn``'s signature; tests/conftest.py puts it
in that function's place.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

PRELOAD = (  # what a service process imports before it serves (a module that moved is skipped)
    "services.run", "services.supervisor", "services.scheduler.main", "services.drafter.core",
    "services.stage.core", "services.verifier.core", "common.speculation.heads.context", "services.cli.main",
    "services.api.app", "transformers", "tokenizers",
)
_RUN_TIME_PREFIXES = ("FLOWRING_", "PYTEST_CURRENT_TEST")  # read after start-up: a fork may differ in them
_REAL_POPEN = subprocess.Popen


class _Become(BaseException):  # noqa: N818 (not an error: unwinds a fresh fork to the top, like SystemExit)
    """Raised in a fresh fork: unwind to :func:`main`, which runs ``argv`` as this process's program."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(argv)
        self.argv = argv


# -- in the test process ---------------------------------------------------------------------------------------


class Zygote:
    """One zygote process for one start-up environment."""

    def __init__(self, env: Mapping[str, str], cwd: Path, folder: Path) -> None:
        self.socket_path = str(folder / "zygote.sock")
        self.log = folder / "zygote.log"
        with open(self.log, "ab") as out:
            self.proc = _REAL_POPEN([sys.executable, "-m", "services.testbed.zygote", self.socket_path],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=dict(env))

    def spawn(self, cmd: list[str], output: Path, env: Mapping[str, str], cwd: Path, timeout_s: float = 300.0) -> int:
        """Fork ``cmd`` in the zygote; returns its pid (not a child of this process)."""
        request = json.dumps({"argv": cmd, "output": str(output), "env": dict(env), "cwd": str(cwd)}).encode()
        deadline = time.monotonic() + timeout_s
        while True:  # the zygote listens once its imports are done
            if self.proc.poll() is not None:
                raise RuntimeError(f"the zygote exited with status {self.proc.returncode}; see {self.log}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.connect(self.socket_path)
                    conn.sendall(request + b"\n")
                    answer = conn.makefile("rb").readline()
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the zygote did not listen within {timeout_s:.0f} s; see {self.log}") from None
                time.sleep(0.05)
        return int(json.loads(answer)["pid"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Zygotes:
    """Zygotes by start-up environment, started on first use; ``spawn`` stands in for the launcher's."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.folder = Path(tempfile.mkdtemp(prefix="flowring-zygote-"))
        self.started: dict[frozenset[tuple[str, str]], Zygote] = {}

    def spawn(self, cmd: list[str], output: Path, env: dict[str, str] | None = None) -> int:
        env = dict(os.environ if env is None else env)
        key = frozenset((k, v) for k, v in env.items() if not k.startswith(_RUN_TIME_PREFIXES))
        if key not in self.started:
            folder = self.folder / str(len(self.started))
            folder.mkdir()
            self.started[key] = Zygote(dict(key), self.cwd, folder)
        return self.started[key].spawn(cmd, output, env, self.cwd)

    def close(self) -> None:
        for zygote in self.started.values():
            zygote.close()
        self.started.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


# -- in the zygote and its forks ---------------------------------------------------------------------------------


def _python_module(argv: list[str]) -> tuple[str, list[str]] | None:
    """``(MODULE, ARGS)`` of ``[this python, -m, MODULE, *ARGS]``, else None."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m":
        return argv[2], argv[3:]
    return None


def _as_if_exec(env: Mapping[str, str]) -> None:
    """What exec would have given a fresh process: default signal handlers, the environment, new seeds."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    subprocess.Popen = _REAL_POPEN  # type: ignore[misc]  # until _run puts the forking one back
    import numpy
    import torch

    torch.seed()  # Python's random reseeds itself at fork; these two do not
    numpy.random.seed()


class _Forked:
    """The part of ``subprocess.Popen`` the supervisor uses, for a child forked instead of exec'd."""

    def __init__(self, args: list[str], stdin: int | None = None, stdout: int | None = None,
                 stderr: int | None = None, env: Mapping[str, str] | None = None) -> None:
        self.args, self.returncode = args, None
        self.stdin = self.stdout = self.stderr = None  # as Popen's, with no pipes
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            try:
                for fd, target in ((0, stdin), (1, stdout), (2, stderr if stderr != subprocess.STDOUT else 1)):
                    if target == subprocess.DEVNULL:
                        target = os.open(os.devnull, os.O_RDWR)
                    if target is not None:
                        os.dup2(target, fd)
                _as_if_exec(os.environ if env is None else env)
            except BaseException:
                os._exit(127)
            raise _Become(args)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _forking_popen(args, *rest, **options):  # type: ignore[no-untyped-def]
    """``subprocess.Popen`` in a forked process: a ``python -m`` command with only the options a supervisor
    passes is forked; anything else is started as usual."""
    plain = all(options.get(k) in (None, subprocess.DEVNULL) for k in ("stdin", "stdout", "stderr"))
    if not rest and isinstance(args, list) and _python_module(args) and set(options) <= {"stdin", "stdout", "stderr", "env"} \
            and plain:  # a pipe (a standby's stdin) needs the real Popen
        return _Forked(args, **options)
    return _REAL_POPEN(args, *rest, **options)


def _serve(socket_path: str) -> list[str]:
    """Fork a process per request until the launcher goes; returns (in a fork) the command to run."""
    parent = os.getppid()

    def reap(_signum: int, _frame: object) -> None:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    signal.signal(signal.SIGCHLD, reap)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    listener.settimeout(1.0)
    while os.getppid() == parent:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(None)
            request = json.loads(conn.makefile("rb").readline())
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                os.setsid()
                os.chdir(request["cwd"])
                out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                _as_if_exec(request["env"])
                return list(request["argv"])
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    sys.exit(0)  # the launcher is gone


def _run(argv: list[str]) -> None:
    """Run ``argv`` as this (forked) process's program; another fork's command may unwind to here."""
    while True:
        module = _python_module(argv)
        if module is None:
            os.execvpe(argv[0], argv, dict(os.environ))
        name, args = module
        sys.path[0] = os.getcwd()  # what `python -m` puts first
        sys.argv = [name, *args]
        subprocess.Popen = _forking_popen  # type: ignore[misc]
        try:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
            return
        except _Become as fork:  # the forked child of this program (its supervisor's Popen) runs its own
            argv = fork.argv


def main() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    gc.freeze()  # the imported objects stay out of the collector: their pages stay shared with the forks
    _run(_serve(sys.argv[1]))


if __name__ == "__main__":
    main()
