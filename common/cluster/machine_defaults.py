"""The defaults a cluster gets from the machine it runs on: the decoding mode and what was measured for it.

Speculation pays when the services it keeps busy have cores of their own: the drafter drafts while
the stages verify. When services share too few cores, every draft forward is taken from the verifying
stages' time. Measured on a 2-core machine (2026-12-01, sleeping OpenMP threads, `flowring bench
--prompts infra/data/code_prompts.jsonl --num-prompts 2 --max-new-tokens 32`), decode tokens/s:
- the default one-stage Qwen2.5-Coder cluster with the 0.5B draft model
  (`infra/results/2026-12-01c-2core-default-sleep.txt`): ar 4.7, chunk 3.2, flowspec 3.4;
- two stages with a one-layer draft head trained for the base (2.24 draft tokens accepted per step)
  (`infra/results/2026-12-01c-2core-head-n2-sleep.txt`): ar 4.4, chunk 3.2 (0.74x ar), flowspec 3.3 (0.76x).
ar was the fastest with either drafter, so it is the default there: on 2 cores the bottleneck is
verifying a tree, not drafting (the head run's JSON, prompt 1, stage-1: chunk busy 5723 ms over 28
forwards of 268 rows, ar 3512 ms over 32 forwards of 74). A head is a cheap drafter (on the GPU machine's host, 2 cores per service: about 18 ms
per tree level against 110 ms for the 0.5B draft model; its drafter was busy 0.31 of the wall time in
the 2-core flowspec run above, the draft model's 0.72), so it needs one core of its own where a draft
model needs two. A user can always name a mode per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CORES_PER_SERVICE_FOR_OVERLAP = 2  # each of drafter, stages and verifier busy at once without sharing
CORES_FOR_A_HEAD_DRAFTER = 1  # a one-layer head keeps up with the stages on one core
DRAFTERS = ("model", "head")


@dataclass(frozen=True)
class ModeChoice:
    mode: str
    reason: str


def choose_mode(cores: int, stages: int, drafter: str = "model") -> ModeChoice:
    """The default mode for ``stages`` pipeline stages (plus drafter and verifier) on ``cores`` cores;
    ``drafter``: a draft ``model`` or a ``head``."""
    services = stages + 2
    drafter_cores = CORES_FOR_A_HEAD_DRAFTER if drafter == "head" else CORES_PER_SERVICE_FOR_OVERLAP
    needed = (stages + 1) * CORES_PER_SERVICE_FOR_OVERLAP + drafter_cores
    kind = "a head drafter" if drafter == "head" else "a draft model"
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
