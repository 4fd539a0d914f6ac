"""mDNS/DNS-SD over python-zeroconf: announce a :class:`BoardAd`, browse for the boards of a group.

IPv4 only (the inventory takes IPv4 addresses). ``interfaces``: the IPv4 addresses to send and listen on;
empty: every interface of the machine.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

from services.discovery.advert import SERVICE_TYPE, AdvertError, BoardAd, from_properties, to_properties

RESOLVE_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class ScanResult:
    boards: tuple[BoardAd, ...]  # by name
    skipped: tuple[str, ...]  # one line per advert that could not be read


def _zeroconf(interfaces: Sequence[str]) -> Zeroconf:
    return Zeroconf(interfaces=list(interfaces) or InterfaceChoice.All, ip_version=IPVersion.V4Only)


@contextlib.contextmanager
def announced(ad: BoardAd, interfaces: Sequence[str] = ()) -> Iterator[None]:
    """Announce ``ad`` on the LAN until the block ends (then say goodbye, so scanners drop it at once)."""
    zc = _zeroconf(interfaces)
    info = ServiceInfo(SERVICE_TYPE, ad.instance_name(), addresses=[socket.inet_aton(ad.address)],
                       port=ad.ssh_port, properties=to_properties(ad),
                       server=f"{ad.name}-{ad.address.replace('.', '-')}.local.")
    try:
        zc.register_service(info)
        yield
    finally:
        with contextlib.suppress(Exception):  # the network may be gone already: closing is what matters
            zc.unregister_service(info)
        zc.close()


class _Collector(ServiceListener):
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.lock = threading.Lock()

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.add(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.add_service(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        with self.lock:
            self.names.discard(name)


def scan(timeout_s: float, *, group: str = "default", interfaces: Sequence[str] = ()) -> ScanResult:
    """The boards of ``group`` that answer within ``timeout_s``, by name (one per name: the first address);
    adverts that cannot be read are returned as one line each, for the caller to report."""
    zc = _zeroconf(interfaces)
    collector = _Collector()
    browser = ServiceBrowser(zc, SERVICE_TYPE, collector)
    try:
        time.sleep(timeout_s)
        with collector.lock:
            names = sorted(collector.names)
        boards: dict[str, BoardAd] = {}
        skipped: list[str] = []
        for name in names:
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=RESOLVE_TIMEOUT_MS)
            if info is None or not info.parsed_addresses(IPVersion.V4Only):
                skipped.append(f"{name}: no IPv4 address resolved within {RESOLVE_TIMEOUT_MS} ms")
                continue
            try:
                ad = from_properties(info.parsed_addresses(IPVersion.V4Only)[0], info.port or 0, info.properties)
            except AdvertError as exc:
                skipped.append(str(exc))
                continue
            if ad.group == group and ad.name not in boards:
                boards[ad.name] = ad
    finally:
        browser.cancel()
        zc.close()
    return ScanResult(tuple(boards[n] for n in sorted(boards)), tuple(skipped))
