"""One speculation budget shared by the requests in flight: each tree shrinks as the load grows.

Every draft node a request keeps in flight is a row each stage forwards and the verifier checks.
With one request those rows fill forwards that would otherwise idle; with many requests in flight
the stages' forwards are full of other requests' rows, and a large tree per request only delays
them all. So the drafter caps the draft nodes of all the requests in flight together
(``total_nodes``, as vLLM's speculative token budget and SpecPipe-DB's dynamic batching do): each
request's tree may hold an even share of it, at most its own ``node_cap``. A share is never below
one node, the root: under the heaviest load flowspec sends each request's next token alone, the
work ar does, and never less. A request whose share is the root alone drafts nothing at all (no
draft forward, not even for its context: the drafter catches up once it speculates again).

Where every draft forward and every tree row takes cores that ar would spend on other requests'
tokens (services sharing a few cores), speculation stops outright beyond ``max_in_flight``
requests in flight (as vLLM's ``speculative_disable_by_batch_size`` does):
``common.cluster.machine_defaults.choose_budget`` sets it from the machine, and docs/results.md
gives the runs that measured it.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TOTAL_NODES = 128  # one request alone keeps its DraftSettings.node_cap (128): solo trees are unchanged


@dataclass(frozen=True)
class SpeculationBudget:
    total_nodes: int = DEFAULT_TOTAL_NODES  # tree nodes (roots included) of every request in flight together
    max_in_flight: int = 0  # with more requests in flight than this, none speculates (0: no such limit)

    def __post_init__(self) -> None:
        if self.total_nodes < 1:
            raise ValueError(f"a speculation budget needs at least one node, got {self.total_nodes}")
        if self.max_in_flight < 0:
            raise ValueError(f"max_in_flight is a request count (0: no limit), got {self.max_in_flight}")

    def share(self, in_flight: int, node_cap: int) -> int:
        """The most nodes (root included) one request's tree may hold with ``in_flight`` requests drafting."""
        if in_flight < 1:
            raise ValueError(f"a share is for a request in flight, got {in_flight} in flight")
        if self.max_in_flight and in_flight > self.max_in_flight:
            return 1
        return max(1, min(node_cap, self.total_nodes // in_flight))

    def fill_nodes(self, in_flight: int, node_cap: int, fill_nodes: int) -> int:
        """Draft nodes below the root of a new round's fill tree: its configured size, within the share."""
        return max(0, min(fill_nodes, self.share(in_flight, node_cap) - 1))
