"""CURVE encryption and ZAP authentication of a LAN cluster's ZeroMQ sockets.

Every socket that binds is a CURVE server holding its board's key pair; every socket that connects is a
CURVE client holding its own pair and the server's public key. So every message is encrypted, and a new
peer is admitted only if it proves it holds a secret key whose public half is authorized: ZeroMQ asks the
process's ZAP handler (:class:`Gatekeeper`), which admits the boards' keys on ring sockets (the ``ring``
domain: commands, segments, reports, heartbeats) and the clients' keys on the scheduler's client socket
(the ``client`` domain). A peer that does not even speak CURVE (a plain socket, another mechanism) fails the
handshake before ZAP is asked; each server socket's monitor reports that (:class:`HandshakeRefusals`). A
refused peer is logged once, with its address and, when it showed one, its public key; a secret key is never
logged. A cluster whose spec has no key file (loopback only) uses plain sockets.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = structlog.get_logger()

RING = "ring"  # ZAP domain of every socket the ring services and the scheduler exchange messages on
CLIENT = "client"  # ZAP domain of the scheduler's client socket
MAX_LOGGED_PEERS = 1024  # refused peers remembered so each is logged once; past this, refusals are only counted
# Monitor events that tell a server socket's peers apart and show a handshake refused before ZAP is asked.
HANDSHAKE_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
WATCH_POLL_MS = 200  # how soon the handshake watch picks up a socket added to it


class CurveKeyError(ValueError):
    """A key pair is missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded (40 bytes)."""

    public: bytes
    secret: bytes = field(repr=False)  # never logged, never on a command line


@dataclass(frozen=True)
class ClientCurve:
    """What a connecting socket needs: its own key pair and the public key of the server it connects to."""

    own: KeyPair
    server_key: str


def load_key_pair(path: str | Path) -> KeyPair:
    """The key pair in a ZeroMQ certificate file that holds a secret key."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the CURVE key pair {path}: {exc}") from exc
    if secret is None:
        raise CurveKeyError(f"{path} holds a public key only; a key pair needs its secret key")
    return KeyPair(public, secret)






def as_server(sock: zmq.Socket, own: KeyPair | None, domain: str, *, watch: bool = True) -> None:
    """Make ``sock`` (before it binds) a CURVE server whose peers the ZAP handler checks in ``domain``.

    With ``watch``, the gatekeeper of the socket's context (if started) also watches its handshakes, so a
    peer without CURVE is logged and counted too; a caller that monitors the socket itself passes False
    and feeds its events to a :class:`HandshakeRefusals` (ZeroMQ allows one monitor per socket).
    """
    if own is None:
        return
    sock.curve_secretkey = own.secret
    sock.curve_publickey = own.public
    sock.curve_server = True
    sock.zap_domain = domain.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # without a ZAP handler, refuse every peer rather than admit all
    gate = gatekeeper_of(sock.context)
    if watch and gate is not None:
        gate.watch(sock, domain)


def as_client(sock: zmq.Socket, curve: ClientCurve | None) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the server whose public key ``curve`` names."""
    if curve is None:
        return
    sock.curve_secretkey = curve.own.secret
    sock.curve_publickey = curve.own.public
    sock.curve_serverkey = curve.server_key.encode()




class RefusalLog:
    """Logs each refused peer (address and public key) once; counts every refusal through ``on_refused``."""

    def __init__(self, on_refused: Callable[[], None] | None = None) -> None:
        self._on_refused = on_refused
        self._logged: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()  # the ZAP thread and the handshake watch both report

    def refused(self, address: str, key: bytes, reason: str, domain: str = "") -> None:
        if self._on_refused is not None:
            self._on_refused()
        peer = (address, key)
        with self._lock:
            if peer in self._logged or len(self._logged) >= MAX_LOGGED_PEERS:
                return
            self._logged.add(peer)
        log.warning("peer_refused", address=address, domain=domain, public_key=key.decode(), reason=reason)


def peer_address(fd: int) -> str:
    """The remote address of the TCP connection on descriptor ``fd``; "" once it is closed (or not TCP)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as conn:
            return str(conn.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return ""


class HandshakeRefusals:
    """Peers refused in the CURVE handshake itself, read from a server socket's monitor events.

    ZeroMQ reports a failed handshake without its descriptor, then at once the disconnect of that
    connection with it; the descriptor's address is read when the accept is read, so a connection
    refused faster than that is logged without its address ("").
    A refusal by ZAP (``HANDSHAKE_FAILED_AUTH``) is the gatekeeper's to log, not this one's. A plain peer
    shows as a mechanism mismatch when this side notices first, else as a handshake cut short
    (``HANDSHAKE_FAILED_NO_DETAIL``), which a peer leaving mid-handshake would also give: the reason says so.
    """

    def __init__(self, refusals: RefusalLog, domain: str = "",
                 address_of: Callable[[int], str] = peer_address) -> None:
        self._refusals = refusals
        self._domain = domain
        self._address_of = address_of
        self._addresses: dict[int, str] = {}  # descriptor -> peer address, while connected
        self._failed = ""  # the reason of a handshake failure whose disconnect is next

    def event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self._addresses[value] = self._address_of(value)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._failed = "no CURVE handshake: a plain socket or another mechanism" \
                if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH else f"handshake protocol error {value:#x}"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._failed = "handshake cut short before any key was shown (a plain socket, or a peer that left)"
        elif event == zmq.EVENT_DISCONNECTED:
            address = self._addresses.pop(value, "")
            if self._failed:
                self._refusals.refused(address, b"", self._failed, self._domain)
            self._failed = ""


class Gatekeeper(ThreadAuthenticator):
    """The ZAP handler of one process: admits the authorized public keys of each domain, refuses the rest.

    Each refused peer (address and public key) is logged once; ``on_refused`` is called for every refusal,
    from the handler's own thread or the handshake watch's. Once started, it is its context's gatekeeper:
    every CURVE server socket made there afterwards has its handshakes watched (:meth:`watch`).
    """

    def __init__(self, ctx: zmq.Context, admitted: Mapping[str, frozenset[bytes]],
                 on_refused: Callable[[], None] | None = None) -> None:
        super().__init__(ctx)
        self._admitted = dict(admitted)
        self.refusals = RefusalLog(on_refused)
        self._address = ""
        self._watched: list[tuple[zmq.Socket, HandshakeRefusals]] = []  # monitors, read by the watch thread
        self._watch_lock = threading.Lock()
        self._watching = threading.Event()
        self._watch_thread: threading.Thread | None = None
        for domain in self._admitted:
            self.configure_curve_callback(domain, self)

    def start(self) -> None:
        super().start()
        _GATES[id(self.context)] = self
        self._watching.set()
        self._watch_thread = threading.Thread(target=self._watch, name="handshake-watch", daemon=True)
        self._watch_thread.start()

    def stop(self) -> None:
        if _GATES.get(id(self.context)) is self:
            del _GATES[id(self.context)]
        self._watching.clear()
        if self._watch_thread is not None:
            self._watch_thread.join()
        super().stop()

    def watch(self, sock: zmq.Socket, domain: str) -> None:
        """Log and count the peers of CURVE server ``sock`` (before it binds) refused in the handshake."""
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        with self._watch_lock:
            self._watched.append((monitor, HandshakeRefusals(self.refusals, domain)))

    def _watch(self) -> None:
        poller, polled = zmq.Poller(), 0
        while self._watching.is_set():
            with self._watch_lock:
                watched = list(self._watched)
            for monitor, _ in watched[polled:]:
                poller.register(monitor, zmq.POLLIN)
            polled = len(watched)
            ready = dict(poller.poll(WATCH_POLL_MS))
            for monitor, refusals in watched:
                while monitor in ready and monitor.poll(0):
                    try:
                        event = recv_monitor_message(monitor)
                    except zmq.ZMQError:  # the watched socket closed: its monitor ends
                        break
                    refusals.event(int(event["event"]), int(event["value"]))
        for monitor, _ in watched:
            monitor.close(0)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The handler answers one request at a time: remember the peer's address for the log of a refusal.
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials check: ``key`` is the peer's Z85 public key."""
        if key in self._admitted.get(domain, frozenset()):
            return True
        self.refusals.refused(self._address, key, "public key not authorized", domain)
        return False


_GATES: dict[int, Gatekeeper] = {}  # the started gatekeeper of each context (ZeroMQ has one ZAP handler per context)


def gatekeeper_of(ctx: zmq.Context) -> Gatekeeper | None:
    """The started gatekeeper of ``ctx``, if any."""
    return _GATES.get(id(ctx))


