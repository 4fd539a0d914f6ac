"""``flowring agent``: announce this board on the LAN (mDNS/DNS-SD) until stopped, for ``scan`` and ``init``."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from services.cli.errors import fail

app = typer.Typer(add_completion=False)
REPO = Path(__file__).resolve().parents[2]


@app.command()
def agent(
    name: Annotated[str, typer.Option(help="The board's name in the inventory (default: this host's name).")] = "",
    address: Annotated[str, typer.Option(help="IPv4 address the head reaches this board on (default: the first "
                                              "non-loopback one).")] = "",
    ssh_port: Annotated[int, typer.Option(min=1, max=65535, help="Where this board's sshd listens.")] = 22,
    user: Annotated[str, typer.Option(help="The login the head uses (default: the user running the agent).")] = "",
    group: Annotated[str, typer.Option(help="Scanners list only the boards of their group.")] = "default",
    memory_mib: Annotated[int, typer.Option(min=0, help="Memory flowring may use here (0: what is available "
                                                        "now).")] = 0,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16: the speed probe's dtype (the cluster's).")] = (
        "bfloat16"),
    threads: Annotated[int, typer.Option(min=0, help="Torch threads of the probe (0: torch's default, as the "
                                                     "services).")] = 0,
    remeasure: Annotated[bool, typer.Option("--remeasure", help="Measure the speed again (else the cached "
                                                                 "figure).")] = False,
) -> None:
    """Measure this board's speed once (cached in FLOWRING_HOME/agent) and announce it until Ctrl-C or SIGTERM."""
    import structlog
    import torch

    from common.models.cache import cache_root
    from common.observability.logs import configure
    from services.cluster.board_agent import flowring_version
    from services.discovery.advert import BoardAd
    from services.discovery.mdns import announced
    from services.discovery.speed import measured_speed

    if dtype not in ("float32", "bfloat16"):
        fail(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    configure("info", service="agent")
    log = structlog.get_logger()
    if threads:
        torch.set_num_threads(threads)
    try:
        address = address or _first_address()
        socket.inet_aton(address)
    except OSError as exc:
        fail(f"--address {address!r}: {exc}")
    home = cache_root()
    speed = measured_speed(home, dtype, remeasure=remeasure)
    ad = BoardAd(
        name=name or socket.gethostname().split(".")[0], address=address, ssh_port=ssh_port,
        user=user or getpass.getuser(), cores=len(os.sched_getaffinity(0)),
        memory_mib=memory_mib or _mem_available_mib(), speed=speed.value, probe=speed.probe,
        python=os.path.abspath(sys.executable), workdir=str(REPO), home=str(home), host=socket.gethostname(),
        flowring=flowring_version(), torch=torch.__version__, group=group,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with announced(ad, [address]):
            typer.echo(f"announcing board {ad.name} at {ad.address}:{ad.ssh_port} (group {ad.group}): {ad.cores} "
                       f"cores, {ad.memory_mib} MiB, {ad.speed:.1f} layer-forwards/s "
                       f"({'cached' if speed.cached else f'measured in {speed.seconds:.1f} s'}; {ad.probe})")
            log.info("agent_announcing", **{k: v for k, v in vars(ad).items() if k != "probe"})
            while not stop.wait(1.0):
                pass
    except KeyboardInterrupt:
        pass
    log.info("agent_stopped", board=ad.name)


def _first_address() -> str:
    """The first non-loopback IPv4 address of this machine's interfaces."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and not str(ip.ip).startswith("127."):
                return str(ip.ip)
    raise OSError("this machine has no IPv4 address besides loopback")


def _mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise OSError("no MemAvailable in /proc/meminfo: give --memory-mib")
