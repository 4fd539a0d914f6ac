"""The defaults a cluster gets from the machine it runs on: the decoding mode and what was measured for it.

Speculation pays when the services it keeps busy have cores of their own: the drafter drafts while
the stages verify. When services share too few cores, every draft forward is taken from the verifying
stages' time. Measured on a 2-core machine (2026-12-01, the default one-stage Qwen2.5-Coder cluster
with sleeping OpenMP threads, `infra/results/2026-12-01c-2core-default-sleep.txt`): ar 4.7 decode
tokens/s (4.2 end to end), chunk 3.2 (3.0), flowspec 3.4 (3.2): ar was the fastest, so it is the
default there. A user can always name a mode per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CORES_PER_SERVICE_FOR_OVERLAP = 2  # each of drafter, stages and verifier busy at once without sharing


@dataclass(frozen=True)
class ModeChoice:
    mode: str
    reason: str


def choose_mode(cores: int, stages: int) -> ModeChoice:
    """The default mode for ``stages`` pipeline stages (plus drafter and verifier) on ``cores`` cores."""
    services = stages + 2
    needed = services * CORES_PER_SERVICE_FOR_OVERLAP
    if cores >= needed:
        return ModeChoice("flowspec", f"{cores} cores give each of the {services} ring services "
                                      f"{CORES_PER_SERVICE_FOR_OVERLAP} of its own, so drafting overlaps verifying")
    return ModeChoice("ar", f"{cores} cores are shared by {services} ring services (overlap needs {needed}): "
                            "drafting would take time from verifying")


def thread_environment(pinned: bool, environ: Mapping[str, str]) -> dict[str, str]:
    """What a service process's environment adds: OpenMP threads that sleep while they wait, unless the
    service has cores of its own (``pinned``) or the user chose a policy (``OMP_WAIT_POLICY`` set).

    Torch's OpenMP threads spin for a while after each parallel region. Services that share the
    host's cores then spin on the cores another service needs. Measured on a 2-core machine
    (2026-12-01, 2 stages of Qwen2.5-Coder 1.5B in bf16 with the draft head, 2 threads each,
    `flowring bench --modes ar,chunk,flowspec --num-prompts 2 --max-new-tokens 32`, decode tokens/s
    spinning / sleeping): ar 4.6 / 4.4, chunk 1.5 / 3.2, flowspec 0.9 / 3.3. The default one-stage
    cluster with the 0.5B draft model: ar 4.9 / 4.7, chunk 3.6 / 3.2, flowspec 0.6 / 3.4
    (`infra/results/2026-12-01c-2core-*.txt`). Sleeping costs ar about 5% and saves the modes that
    overlap services from a collapse. A pinned service keeps the spin: nothing else waits for its cores.
    """
    if pinned or "OMP_WAIT_POLICY" in environ:
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}
