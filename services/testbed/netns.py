"""A LAN of boards on one machine: network namespaces on a bridge, each with a real OpenSSH server.

Needs root, ``ip`` (iproute2) and Debian's ``/usr/sbin/sshd``. :func:`unavailable` says why not, or
returns "". Host and user keys are generated per LAN; the user key logs in as the current user.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSHD_READY_TIMEOUT_S = 15.0
SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {pid_file}
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@dataclass(frozen=True)
class NetnsBoard:
    name: str
    netns: str
    address: str
    root: Path  # this board's own folder (its FLOWRING_HOME is root/home)


def unavailable() -> str:
    """Why a namespace LAN cannot be built here, or "" when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if not SSHD.is_file():
        return f"needs OpenSSH's server at {SSHD} (apt-get install -y openssh-server)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "needs the OpenSSH client (ssh, ssh-keygen)"
    probe = f"frprobe{os.getpid() % 100000}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode != 0:
        return "cannot create network namespaces here (no CAP_SYS_ADMIN?)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return ""


class NetnsLan:
    """``count`` namespace boards on a bridge in the root namespace (which plays the head)."""

    def __init__(self, root: Path, count: int) -> None:
        tag = f"fr{os.getpid() % 100000}"
        subnet = f"10.77.{os.getpid() % 250}"
        self.root, self.bridge, self.head_address = root, f"{tag}br", f"{subnet}.1"
        self.boards = [NetnsBoard(f"b{i}", f"{tag}n{i}", f"{subnet}.{10 + i}", root / f"b{i}")
                       for i in range(1, count + 1)]
        self._veths = [f"{tag}h{i}" for i in range(1, count + 1)]  # root-namespace ends, on the bridge
        self._inner = [f"{tag}v{i}" for i in range(1, count + 1)]  # the boards' ends
        self._sshd: list[subprocess.Popen] = []
        self.user = getpass.getuser()
        self.identity = root / "user_key"
        self.known_hosts = root / "known_hosts"

    def __enter__(self) -> NetnsLan:
        try:
            self._network()
            self._keys()
            for board in self.boards:
                self._start_sshd(board)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the servers and remove every namespace, link and bridge made here."""
        for proc in self._sshd:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        for board, veth in zip(self.boards, self._veths, strict=True):
            subprocess.run(["ip", "netns", "del", board.netns], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def _network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.head_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for board, veth, inner in zip(self.boards, self._veths, self._inner, strict=True):
            _ip("netns", "add", board.netns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", board.netns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", board.netns, "addr", "add", f"{board.address}/24", "dev", inner)
            _ip("-n", board.netns, "link", "set", inner, "up")
            _ip("-n", board.netns, "link", "set", "lo", "up")

    def _keys(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _keygen(self.identity)
        lines = []
        for board in self.boards:
            board.root.mkdir(parents=True, exist_ok=True)
            _keygen(board.root / "host_key")
            lines.append(f"{board.address} {(board.root / 'host_key.pub').read_text().strip()}\n")
        self.known_hosts.write_text("".join(lines))
        (self.root / "authorized_keys").write_text(Path(f"{self.identity}.pub").read_text())

    def _start_sshd(self, board: NetnsBoard) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
        config = board.root / "sshd_config"
        config.write_text(SSHD_CONFIG.format(address=board.address, host_key=board.root / "host_key",
                                             authorized_keys=self.root / "authorized_keys",
                                             pid_file=board.root / "sshd.pid"))
        with open(board.root / "sshd.log", "wb") as log:
            self._sshd.append(subprocess.Popen(
                ["ip", "netns", "exec", board.netns, str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + SSHD_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((board.address, 22), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"sshd on {board.address} did not listen: {(board.root / 'sshd.log').read_text()[-500:]}")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   capture_output=True)
