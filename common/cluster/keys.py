"""CURVE key files of a LAN cluster: one key pair per board, one for the head's clients.

A keys folder (mode 0700) holds, per board, ``board-NAME.key`` (its public key) and ``board-NAME.key_secret``
(the pair, mode 0600), and ``client.key`` / ``client.key_secret`` for the head's clients (CLI, HTTP API,
bring-up). The files are ZeroMQ certificates (:func:`zmq.auth.load_certificate` reads them). Every public
key travels in the cluster spec; a board receives only its own secret file (services/cluster/bringup.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import zmq

from common.cluster.settings import ClusterSpec, Curve, Placement
from common.wire.curve import CLIENT, RING, ClientCurve, CurveKeyError, Gatekeeper, KeyPair, load_key_pair

CLIENT_NAME = "client"
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
FOLDER_MODE = 0o700
_HEADER = "#   ZeroMQ CURVE {what} certificate, written by `flowring keys create`\n"


def board_key_name(board: str) -> str:
    """The file stem of ``board``'s key pair (never ``client``: board names hold no such prefix)."""
    return f"board-{board}"


def default_keys_dir(home: Path, inventory: Path) -> Path:
    """Where ``flowring keys create`` and ``flowring up`` keep an inventory's keys: HOME/keys/<file stem>."""
    return home / "keys" / Path(inventory).stem


@dataclass(frozen=True)
class ClusterKeys:
    """The head's view of a cluster's keys: every board's pair and the clients' pair."""

    folder: Path
    boards: dict[str, KeyPair]
    client: KeyPair

    def secret_file(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"


def create_keys(folder: Path, boards: Iterable[str], *, replace: bool = False) -> dict[str, KeyPair]:
    """Create a key pair per board and one for the clients in ``folder``; return them by file stem.

    Existing pairs are kept unless ``replace``; the secret files are created with mode 0600, never wider.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(FOLDER_MODE)
    created = {}
    for name in [*(board_key_name(b) for b in boards), CLIENT_NAME]:
        secret = folder / f"{name}.key_secret"
        if secret.exists() and not replace:
            continue
        public_key, secret_key = zmq.curve_keypair()
        _write(folder / f"{name}.key", _certificate("public", public_key), PUBLIC_MODE)
        _write(secret, _certificate("secret", public_key, secret_key), SECRET_MODE)
        created[name] = KeyPair(public_key, secret_key)
    return created


def load_keys(folder: Path, boards: Iterable[str], inventory: Path) -> ClusterKeys:
    """Every key pair a cluster of ``boards`` needs; raises CurveKeyError (one line) when one is missing."""
    missing = [n for n in [*(board_key_name(b) for b in boards), CLIENT_NAME]
               if not (folder / f"{n}.key_secret").exists()]
    if missing:
        raise CurveKeyError(f"no CURVE key pair for {', '.join(missing)} in {folder}: run `flowring keys create "
                            f"--cluster {inventory}` first (a LAN cluster runs only with keys)")
    loose = [p.name for p in folder.glob("*.key_secret") if p.stat().st_mode & 0o077]
    if loose:
        raise CurveKeyError(f"secret key file(s) {', '.join(sorted(loose))} in {folder} are readable by others: "
                            f"chmod 600 them")
    pairs = {b: load_key_pair(folder / f"{board_key_name(b)}.key_secret") for b in boards}
    return ClusterKeys(folder, pairs, load_key_pair(folder / f"{CLIENT_NAME}.key_secret"))


def with_keys(spec: ClusterSpec, boards_of: Mapping[str, str], keys: ClusterKeys) -> ClusterSpec:
    """``spec`` secured: each service's board public key, the clients' key admitted, the head's client key file.

    ``boards_of`` maps each service to its board. Each board's own copy replaces ``curve.key_file``.
    """
    def place(p: Placement) -> Placement:
        return replace(p, public_key=keys.boards[boards_of[p.name]].public.decode())

    curve = Curve(key_file=str(keys.secret_file(CLIENT_NAME)), client_keys=(keys.client.public.decode(),))
    return replace(spec, drafter=place(spec.drafter), stages=tuple(place(s) for s in spec.stages),
                   verifier=place(spec.verifier), scheduler=place(spec.scheduler), curve=curve)


def _certificate(what: str, public_key: bytes, secret_key: bytes | None = None) -> str:
    lines = [_HEADER.format(what=what), "metadata\n", "curve\n", f'    public-key = "{public_key.decode()}"\n']
    if secret_key is not None:
        lines.append(f'    secret-key = "{secret_key.decode()}"\n')
    return "".join(lines)


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``path`` afresh, created with ``mode`` (so a secret is never readable by others, even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, mode)  # the umask may have narrowed the mode given to open


def own_keys(spec: ClusterSpec) -> KeyPair | None:
    """This process's key pair, or None when the cluster runs without CURVE."""
    return load_key_pair(spec.curve.key_file) if spec.curve.enabled else None


def client_curve(own: KeyPair | None, server: Placement) -> ClientCurve | None:
    """CURVE settings to connect to ``server``'s sockets; None without keys."""
    return None if own is None else ClientCurve(own, server.public_key)


def admitted_keys(spec: ClusterSpec) -> dict[str, frozenset[bytes]]:
    """Public keys admitted per ZAP domain: every board's on ring sockets, the clients' on the client socket."""
    boards = frozenset(p.public_key.encode() for p in (*spec.ring, spec.scheduler) if p.public_key)
    return {RING: boards, CLIENT: frozenset(k.encode() for k in spec.curve.client_keys)}


def start_gatekeeper(ctx: zmq.Context, spec: ClusterSpec, on_refused: Callable[[], None] | None = None) -> Gatekeeper:
    """Start the ZAP handler of ``ctx`` for ``spec``'s keys (before any CURVE server socket binds)."""
    gate = Gatekeeper(ctx, admitted_keys(spec), on_refused)
    gate.start()
    return gate

