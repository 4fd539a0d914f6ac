"""The defaults a cluster gets from the machine it runs on: the decoding mode and what was measured for it.

Speculation pays when the services it keeps busy have cores of their own: the drafter drafts while
the stages verify. When services share too few cores, every draft forward is taken from the verifying
stages' time. Measured on a 2-core machine (2026-12-01, the default one-stage Qwen2.5-Coder cluster,
`infra/results/2026-12-01-2core-default.json`): ar 5.6 decode tokens/s (5.5 end to end), chunk 6.4
(4.4 end to end), flowspec 1.6: ar was the fastest end to end, so it is the default there. A user
can always name a mode per request.
"""

from __future__ import annotations

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
