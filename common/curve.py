"""CURVE encryption and ZAP authentication of a LAN cluster's ZeroMQ sockets.

Every socket that binds is a CURVE server holding its board's key pair; every socket that connects is a
CURVE client holding its own pair and the server's public key. So every message is encrypted, and a new
peer is admitted only if it proves it holds a secret key whose public half is authorized: ZeroMQ asks the
process's ZAP handler (:class:`Gatekeeper`), which admits the boards' keys on ring sockets (the ``ring``
domain: commands, segments, reports, heartbeats) and the clients' keys on the scheduler's client socket
(the ``client`` domain). A refused peer is logged once, with its address and public key; a secret key is
never logged. A cluster whose spec has no key file (loopback only) uses plain sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import zmq
from zmq.auth.thread import ThreadAuthenticator

from common.settings import ClusterSpec, Placement

log = structlog.get_logger()

RING = "ring"  # ZAP domain of every socket the ring services and the scheduler exchange messages on
CLIENT = "client"  # ZAP domain of the scheduler's client socket
MAX_LOGGED_PEERS = 1024  # refused peers remembered so each is logged once; past this, refusals are only counted


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


def own_keys(spec: ClusterSpec) -> KeyPair | None:
    """This process's key pair, or None when the cluster runs without CURVE."""
    return load_key_pair(spec.curve.key_file) if spec.curve.enabled else None


def client_curve(own: KeyPair | None, server: Placement) -> ClientCurve | None:
    """CURVE settings to connect to ``server``'s sockets; None without keys."""
    return None if own is None else ClientCurve(own, server.public_key)


def as_server(sock: zmq.Socket, own: KeyPair | None, domain: str) -> None:
    """Make ``sock`` (before it binds) a CURVE server whose peers the ZAP handler checks in ``domain``."""
    if own is None:
        return
    sock.curve_secretkey = own.secret
    sock.curve_publickey = own.public
    sock.curve_server = True
    sock.zap_domain = domain.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # without a ZAP handler, refuse every peer rather than admit all


def as_client(sock: zmq.Socket, curve: ClientCurve | None) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the server whose public key ``curve`` names."""
    if curve is None:
        return
    sock.curve_secretkey = curve.own.secret
    sock.curve_publickey = curve.own.public
    sock.curve_serverkey = curve.server_key.encode()


def admitted_keys(spec: ClusterSpec) -> dict[str, frozenset[bytes]]:
    """Public keys admitted per ZAP domain: every board's on ring sockets, the clients' on the client socket."""
    boards = frozenset(p.public_key.encode() for p in (*spec.ring, spec.scheduler) if p.public_key)
    return {RING: boards, CLIENT: frozenset(k.encode() for k in spec.curve.client_keys)}


class Gatekeeper(ThreadAuthenticator):
    """The ZAP handler of one process: admits the authorized public keys of each domain, refuses the rest.

    Each refused peer (address and public key) is logged once; ``on_refused`` is called for every refusal,
    from the handler's own thread.
    """

    def __init__(self, ctx: zmq.Context, admitted: Mapping[str, frozenset[bytes]],
                 on_refused: Callable[[], None] | None = None) -> None:
        super().__init__(ctx)
        self._admitted = dict(admitted)
        self._on_refused = on_refused
        self._address = ""
        self._logged: set[tuple[str, bytes]] = set()
        for domain in self._admitted:
            self.configure_curve_callback(domain, self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The handler answers one request at a time: remember the peer's address for the log of a refusal.
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials check: ``key`` is the peer's Z85 public key."""
        if key in self._admitted.get(domain, frozenset()):
            return True
        if self._on_refused is not None:
            self._on_refused()
        peer = (self._address, key)
        if peer not in self._logged and len(self._logged) < MAX_LOGGED_PEERS:
            self._logged.add(peer)
            log.warning("peer_refused", address=self._address, domain=domain, public_key=key.decode(),
                        reason="public key not authorized")
        return False


def start_gatekeeper(ctx: zmq.Context, spec: ClusterSpec, on_refused: Callable[[], None] | None = None) -> Gatekeeper:
    """Start the ZAP handler of ``ctx`` for ``spec``'s keys (before any CURVE server socket binds)."""
    gate = Gatekeeper(ctx, admitted_keys(spec), on_refused)
    gate.start()
    return gate
