"""The defaults a cluster gets from the machine it runs on: the decoding mode, and why.

Speculation pays when the services it keeps busy have cores of their own: the drafter drafts while
the stages verify. When services share too few cores, every draft forward is taken from the verifying
stages' time, so there ar is the default: on shared cores the bottleneck is verifying a tree, not
drafting (docs/results.md gives the measured runs). A head is a much cheaper drafter than a draft
model, so it needs one core of its own where a draft model needs two. A user can always name a mode
per request.

Speculation also needs rows that come almost free: each verification forwards a tree's rows to accept a
few tokens. Where a 16-row forward costs many one-row forwards (bf16 matrix products on a CPU without
bf16 instructions run about row by row; docs/results.md gives the figures measured here), a stage
spends on a tree about what the steps it saves would cost. Pipelined
over ``stages`` stages that work at once, a tree pays while its row cost stays under the tokens it
accepts times the stages; beyond, ar is the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.speculation.budget import DEFAULT_TOTAL_NODES

CORES_PER_SERVICE_FOR_OVERLAP = 2  # each of drafter, stages and verifier busy at once without sharing
CORES_FOR_A_HEAD_DRAFTER = 1  # a one-layer head keeps up with the stages on one core
SHARED_CORES_TOTAL_NODES = 1  # on shared cores every share is the root alone: no speculation (docs/results.md)
DRAFTERS = ("model", "head")
TOKENS_PER_STEP = 3.0  # tokens a verification accepts: the draft model's and the head's trees on code, about 3


@dataclass(frozen=True)
class ModeChoice:
    mode: str
    reason: str


def cores_needed(stages: int, drafter: str) -> int:
    """Cores for every ring service of ``stages`` stages to draft or verify on cores of its own."""
    drafter_cores = CORES_FOR_A_HEAD_DRAFTER if drafter == "head" else CORES_PER_SERVICE_FOR_OVERLAP
    return (stages + 1) * CORES_PER_SERVICE_FOR_OVERLAP + drafter_cores


def choose_mode(cores: int, stages: int, drafter: str = "model",
                row_cost: Callable[[], float] | None = None) -> ModeChoice:
    """The default mode for ``stages`` pipeline stages (plus drafter and verifier) on ``cores`` cores;
    ``drafter``: a draft ``model`` or a ``head``. ``row_cost``: measures what a 16-row forward costs in
    one-row forwards on this machine (``services.discovery.speed.measured_row_cost``), called only when the
    cores would allow speculation."""
    services = stages + 2
    needed = cores_needed(stages, drafter)
    kind = "a head drafter" if drafter == "head" else "a draft model"
    if cores >= needed and row_cost is not None:
        cost, bound = row_cost(), TOKENS_PER_STEP * stages
        if cost > bound:
            return ModeChoice("ar", f"a 16-row forward costs {cost:.1f} one-row forwards on this CPU (over "
                                    f"{bound:.0f}, {TOKENS_PER_STEP:.0f} tokens a verification accepts x {stages} "
                                    f"stage(s)): verifying trees would cost what they save, though {cores} cores "
                                    f"would let drafting overlap")
    if cores >= needed:
        return ModeChoice("flowspec", f"{cores} cores give each of the {services} ring services its own "
                                      f"({needed} needed with {kind}), so drafting overlaps verifying")
    return ModeChoice("ar", f"{cores} cores are shared by {services} ring services (overlap needs {needed} with "
                            f"{kind}): verifying trees would take the stages' time; measured on 2 cores, ar "
                            f"beat chunk and flowspec with either drafter")


def thread_environment(pinned: bool, environ: Mapping[str, str]) -> dict[str, str]:
    """What a service process's environment adds: OpenMP threads that sleep while they wait, unless the
    service has cores of its own (``pinned``) or the user chose a policy (``OMP_WAIT_POLICY`` set).

    Torch's OpenMP threads spin for a while after each parallel region. Services that share the
    host's cores then spin on the cores another service needs, and the modes that overlap services
    collapse; sleeping costs ar little (docs/results.md gives the measured runs). A pinned service keeps
    the spin: nothing else waits for its cores.
    """
    if pinned or "OMP_WAIT_POLICY" in environ:
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


@dataclass(frozen=True)
class BudgetChoice:
    total_nodes: int  # draft nodes of every request in flight together (common.speculation.budget)
    max_in_flight: int  # beyond this many requests in flight none speculates (0: no limit)
    reason: str


def choose_budget(cores: int, stages: int, drafter: str = "model",
                  row_cost: Callable[[], float] | None = None) -> BudgetChoice:
    """The speculation budget for ``stages`` stages on ``cores`` cores (``drafter``: a draft ``model`` or a
    ``head``): the default budget where every service has cores of its own; where they share cores, the root
    alone (``SHARED_CORES_TOTAL_NODES``): every draft forward and tree row is then taken from the cores ar
    spends on tokens. Measured on 2 cores (docs/results.md, 2026-12-08): speculating only alone still lost to ar
    with 4 in flight, because a batch's last request runs alone, at flowspec's solo speed (a third of ar's there).
    Likewise where ``row_cost`` (as for ``choose_mode``) says a tree's rows cost what they save."""
    mode = choose_mode(cores, stages, drafter, row_cost)
    if mode.mode == "flowspec":
        return BudgetChoice(DEFAULT_TOTAL_NODES, 0, f"{cores} cores: every ring service drafts or verifies on "
                                                    "its own cores")
    if cores >= cores_needed(stages, drafter):
        return BudgetChoice(SHARED_CORES_TOTAL_NODES, 0, f"no request speculates: {mode.reason}")
    return BudgetChoice(SHARED_CORES_TOTAL_NODES, 0,
                        f"{cores} cores shared by {stages + 2} ring services: every draft forward and tree row takes "
                        "the cores ar spends on tokens, so no request speculates (flowspec and chunk send the root "
                        "alone, as ar does); measured on 2 cores (docs/results.md)")
