"""Every service's view of each request's draft tree, per epoch, checked for agreement.

At one epoch the services know different amounts of the tree (the drafter drafts ahead, reports and
segments are in flight), but they must agree on what they know: the scheduler's tree (tokens and
parents) and every stage's cached nodes (parents) are prefixes of the drafter's tree at that epoch,
and the drafter's tree only grows within an epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.support.local_ring import LocalRing

View = tuple[tuple[int, ...], tuple[int, ...]]  # (tokens, parents); tokens empty for a stage


@dataclass
class TreeLedger:
    drafter: dict[tuple[str, int], View] = field(default_factory=dict)  # (request, epoch) -> its longest tree
    others: dict[tuple[str, int, str], set[View]] = field(default_factory=dict)  # (request, epoch, service)
    problems: list[str] = field(default_factory=list)

    def __call__(self, ring: LocalRing) -> None:
        """Record the ring's trees now (a LocalRing ``after_each`` hook)."""
        for rid, req in ring.drafter.requests.items():
            view = ((), ()) if req.tree is None else (req.tree.tokens, req.tree.parents)
            key = (rid, req.log.epoch)
            before = self.drafter.get(key, ((), ()))
            if not _is_prefix(before, view):
                self.problems.append(f"{rid} epoch {key[1]}: the drafter's tree changed within the epoch")
            self.drafter[key] = view
        for rid, job in ring.scheduler.jobs.items():
            self.others.setdefault((rid, job.epoch, "scheduler"), set()).add((job.tree.tokens, job.tree.parents))
        for stage in ring.stages:
            for rid, req in stage.requests.items():
                self.others.setdefault((rid, req.log.epoch, stage.name), set()).add(((), tuple(req.parents)))

    def disagreements(self) -> list[str]:
        """Views that are not prefixes of the drafter's tree at their epoch (plus problems seen)."""
        out = list(self.problems)
        for (rid, epoch, service), views in self.others.items():
            tokens, parents = self.drafter.get((rid, epoch), ((), ()))
            for view in views:
                reference = ((), parents) if not view[0] else (tokens, parents)
                if not _is_prefix(view, reference):
                    out.append(f"{rid} epoch {epoch}: {service} holds {view}, the drafter {(tokens, parents)}")
        return out

    def epochs(self) -> int:
        """Distinct (request, epoch) pairs seen."""
        return len(self.drafter)


def _is_prefix(view: View, of: View) -> bool:
    return all(mine == theirs[: len(mine)] for mine, theirs in zip(view, of, strict=True))
