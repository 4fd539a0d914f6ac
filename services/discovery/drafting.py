"""From scanned boards to an inventory: placement of the services and the TOML ``flowring up`` reads.

Pure. Placement rule (:func:`place`): the board with the most memory (the first by name on a tie) runs
the scheduler and the drafter, which loads the whole draft model; the other boards, by name, run one
pipeline stage each; the verifier runs on the last stage's board. One board runs everything. The layer
split is the planner's (``common.cluster.layout.layer_ranges``), computed by the caller from the boards'
measured speeds and memory and written as explicit ranges, so the file says what ``up`` will do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from common.cluster.inventory import Board, Inventory, InventoryError, SshOptions
from services.discovery.advert import BoardAd


@dataclass(frozen=True)
class InitOptions:
    """What ``flowring init`` takes besides the boards (the inventory's other fields)."""

    base: str
    draft: str
    dtype: str = "bfloat16"
    device: str = "cpu"
    stages: int = 0  # stage boards; 0: every board but the control board (or the one board)
    control: str = ""  # the board for the scheduler and drafter; "": the one with the most memory
    threads: int = 0
    kv_tokens: int = 2048
    overhead_mib: float = 300.0
    base_port: int = 7700
    identity: str = ""
    known_hosts: str = ""


@dataclass(frozen=True)
class Placement:
    scheduler: str
    drafter: str
    stages: tuple[str, ...]
    verifier: str


def place(ads: Sequence[BoardAd], stages: int = 0, control: str = "") -> Placement:
    """Which board runs which service (see the module docstring); :class:`InventoryError` when impossible."""
    names = sorted(ad.name for ad in ads)
    if not names:
        raise InventoryError("no boards found: start `flowring agent` on each board (same LAN, same --group)")
    if control and control not in names:
        raise InventoryError(f"--control {control!r} is not a board found ({', '.join(names)})")
    by_memory = sorted(ads, key=lambda ad: (-ad.memory_mib, ad.name))
    head = control or by_memory[0].name
    others = [n for n in names if n != head]
    if stages < 0 or stages > max(len(others), 1):
        raise InventoryError(f"{stages} stage board(s) asked for, but {len(others)} board(s) besides {head} "
                             "were found (each stage needs its own board)")
    chosen = tuple(others[:stages or len(others)]) or (head,)
    return Placement(scheduler=head, drafter=head, stages=chosen, verifier=chosen[-1])


def draft_inventory(ads: Sequence[BoardAd], options: InitOptions) -> Inventory:
    """The inventory of the scanned boards, ``layers = "auto"`` (the caller fills in the planner's split)."""
    where = place(ads, options.stages, options.control)
    used = {where.scheduler, where.drafter, where.verifier, *where.stages}
    boards = tuple(
        Board(name=ad.name, address=ad.address, user=ad.user, cores=ad.cores, memory_mib=ad.memory_mib,
              python=ad.python, workdir=ad.workdir, home=ad.home, ssh_port=ad.ssh_port, speed=round(ad.speed, 3))
        for ad in sorted(ads, key=lambda ad: ad.name) if ad.name in used
    )
    return Inventory(
        boards=boards, base=options.base, draft=options.draft, scheduler=where.scheduler, drafter=where.drafter,
        verifier=where.verifier, stages=where.stages, dtype=options.dtype, device=options.device,
        threads=options.threads, base_port=options.base_port, overhead_mib=options.overhead_mib,
        kv_tokens=options.kv_tokens, ssh=SshOptions(identity=options.identity, known_hosts=options.known_hosts),
    )


def inventory_toml(inv: Inventory, notes: Sequence[str] = ()) -> str:
    """``inv`` as the TOML of ``infra/lan.example.toml`` (tree and timeouts at their defaults are left out);
    ``notes`` become comment lines at the top."""
    lines = [f"# {note}" for note in notes]
    lines += ["", "[models]", f"base = {_q(inv.base)}",
              f"draft_head = {_q(inv.draft_head)}" if inv.draft_head else f"draft = {_q(inv.draft)}", f"dtype = {_q(inv.dtype)}",
              f"device = {_q(inv.device)}", "", "[placement]", f"scheduler = {_q(inv.scheduler)}",
              f"drafter = {_q(inv.drafter)}", f"stages = [{', '.join(_q(s) for s in inv.stages)}]",
              f"verifier = {_q(inv.verifier)}", f"layers = {_q(inv.layers)}", "", "[ports]",
              f"base = {inv.base_port}", "", "[resources]", f"threads = {inv.threads}",
              f"overhead_mib = {inv.overhead_mib:g}", f"kv_tokens = {inv.kv_tokens}"]
    for section, value in (("tree", inv.tree), ("ssh", inv.ssh), ("timeouts", inv.timeouts)):
        changed = _changed_fields(value)
        if changed:
            lines += ["", f"[{section}]", *(f"{k} = {_value(v)}" for k, v in changed.items())]
    for b in inv.boards:
        lines += ["", "[[boards]]", f"name = {_q(b.name)}", f"address = {_q(b.address)}", f"user = {_q(b.user)}",
                  f"ssh_port = {b.ssh_port}", f"cores = {b.cores}", f"memory_mib = {b.memory_mib}",
                  f"speed = {b.speed:g}", f"python = {_q(b.python)}", f"workdir = {_q(b.workdir)}",
                  f"home = {_q(b.home)}"]
    return "\n".join(lines) + "\n"


def _changed_fields(value: object) -> dict[str, object]:
    default = type(value)()
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(default, f.name)}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _q(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _q(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'
