"""The defaults a cluster gets from the machine it runs on: the decoding mode and what was measured for it.

Speculation pays when the services it keeps busy have cores of their own: the drafter drafts while
the stages verify. When services share too few cores, every draft forward is taken from the verifying
stages' time, and on the 2-core machines of this project (measured, see the README's results) plain
pipelined autoregressive decoding was the fastest mode. A user can always name a mode per request.
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
