"""What a board announces over DNS-SD: a :class:`BoardAd` as the TXT properties of a ``_flowring._tcp`` service.

Pure. The service's port is the board's SSH port (the head reaches the board over SSH); its address is
the one the agent announces on. Every TXT value is text; :func:`from_properties` checks each and raises
:class:`AdvertError` with one line naming the board and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

SERVICE_TYPE = "_flowring._tcp.local."
TXT_VERSION = "1"  # the layout of the properties below; a scanner skips adverts of another layout
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class AdvertError(ValueError):
    """A service of our type whose properties are not a board advert this scanner understands."""


@dataclass(frozen=True)
class BoardAd:
    """A board as its agent describes it; the fields of an inventory's ``[[boards]]`` table and versions."""

    name: str
    address: str  # IPv4 address the head reaches it on
    ssh_port: int
    user: str
    cores: int
    memory_mib: int  # memory available for flowring when the agent started
    speed: float  # layer-forwards/s of the agent's speed probe (see ``probe``)
    probe: str  # what ``speed`` measured, e.g. "qwen2-1536x8960 bfloat16 16 rows 1 thread"
    python: str  # the Python with flowring's dependencies
    workdir: str  # the flowring checkout
    home: str  # FLOWRING_HOME
    host: str = ""  # the board's own host name
    flowring: str = ""
    torch: str = ""
    group: str = "default"  # a scanner lists only the boards of its group

    def instance_name(self) -> str:
        """The DNS-SD instance name: one per board name and group on a LAN."""
        return f"{self.name}.{self.group}.{SERVICE_TYPE}"


def to_properties(ad: BoardAd) -> dict[str, str]:
    """The TXT properties of ``ad`` (address and SSH port travel as the service's address and port)."""
    return {
        "txtvers": TXT_VERSION, "name": ad.name, "group": ad.group, "host": ad.host, "user": ad.user,
        "cores": str(ad.cores), "memory_mib": str(ad.memory_mib), "speed": f"{ad.speed:.4g}", "probe": ad.probe,
        "python": ad.python, "workdir": ad.workdir, "home": ad.home, "flowring": ad.flowring, "torch": ad.torch,
    }


def from_properties(address: str, port: int, properties: Mapping[bytes | str, bytes | str | None]) -> BoardAd:
    """The board an advert describes; :class:`AdvertError` (one line) when a field is missing or malformed."""
    props = {_text(k): _text(v) for k, v in properties.items()}
    label = f"advert from {address}"
    if props.get("txtvers") != TXT_VERSION:
        raise AdvertError(f"{label}: txtvers {props.get('txtvers')!r} is not {TXT_VERSION!r} (another flowring "
                          "version?)")
    name = props.get("name", "")
    if not _NAME.fullmatch(name):
        raise AdvertError(f"{label}: name must be letters, digits, '.', '_' or '-', got {name!r}")
    label = f"board {name} ({address})"
    for key in ("user", "python", "workdir", "home"):
        if not props.get(key):
            raise AdvertError(f"{label}: {key} is missing")
    if not 0 < port < 65536:
        raise AdvertError(f"{label}: SSH port {port} is not a port")
    return BoardAd(
        name=name, address=address, ssh_port=port, user=props["user"], python=props["python"],
        workdir=props["workdir"], home=props["home"], host=props.get("host", ""), probe=props.get("probe", ""),
        flowring=props.get("flowring", ""), torch=props.get("torch", ""), group=props.get("group") or "default",
        cores=int(_number(props, "cores", label, whole=True)),
        memory_mib=int(_number(props, "memory_mib", label, whole=True)),
        speed=_number(props, "speed", label, whole=False),
    )


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _number(props: Mapping[str, str], key: str, label: str, *, whole: bool) -> float:
    raw = props.get(key, "")
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = -1
    if not value > 0 or value != value or value == float("inf"):
        kind = "a positive whole number" if whole else "a positive number"
        raise AdvertError(f"{label}: {key} must be {kind}, got {raw!r}")
    return value
