"""Prometheus series of the ring: one registry per service process, served as text over HTTP.

Ring services export busy seconds (``rate()`` of it is the busy ratio: the pipeline bubbles made
visible), messages handled and rejected, per-hop bytes and send latency; stages and the verifier also
the rows per model forward and the requests whose rows shared it (batching across requests). The scheduler exports the
spec-decode counters users know from vLLM (acceptance length = 1 + accepted tokens / drafts), request
latency and time-to-first-token histograms, prune and expand counts and round restarts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REQUESTS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
HOP_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServiceMetrics:
    """What every ring service counts (and the scheduler too: it receives and rejects messages)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.busy_seconds = Counter("flowring_busy_seconds", "Seconds spent handling messages.", registry=r)
        self.handled = Counter("flowring_messages_handled", "Messages handled, by kind.", ["kind"], registry=r)
        self.rejected = Counter("flowring_messages_rejected", "Messages rejected, by reason.", ["reason"],
                                registry=r)
        self.peers_refused = Counter("flowring_peers_refused", "Connection attempts refused by CURVE "
                                     "authentication (a LAN cluster: the peer's key is not authorized).", registry=r)
        self.faults = Counter("flowring_request_faults", "Requests this service failed with a Fault.", registry=r)
        self.hop_bytes = Counter("flowring_hop_bytes_sent", "Bytes sent per outbound hop.", ["hop"], registry=r)
        self.hop_send_seconds = Histogram("flowring_hop_send_seconds",
                                          "From send() to the socket, per hop (queue and link emulation).",
                                          ["hop"], buckets=HOP_BUCKETS_S, registry=r)
        self.in_flight = Gauge("flowring_requests_in_flight", "Requests started and not ended here.", registry=r)
        self.kv_cache_bytes = Gauge("flowring_kv_cache_bytes", "Bytes held by KV caches.", registry=r)
        self.forward_rows = Histogram("flowring_forward_rows", "Rows per model forward, every request's together.",
                                      buckets=ROWS_BUCKETS, registry=r)
        self.forward_requests = Histogram("flowring_forward_requests", "Requests whose rows shared one forward.",
                                          buckets=REQUESTS_BUCKETS, registry=r)

    def hop_observer(self, hop: str) -> Callable[[int, float], None]:
        """A callback for one outbound hop: (bytes sent, seconds from send() to the socket)."""
        sent_bytes, seconds = self.hop_bytes.labels(hop), self.hop_send_seconds.labels(hop)

        def observe(nbytes: int, elapsed_s: float) -> None:
            sent_bytes.inc(nbytes)
            seconds.observe(elapsed_s)

        return observe

    def totals(self) -> dict[str, int]:
        """Counter totals over all labels (what a heartbeat carries)."""
        out: dict[str, int] = {}
        for family in self.registry.collect():
            if family.type == "counter":
                total = sum(s.value for s in family.samples if s.name.endswith("_total"))
                out[family.name.removeprefix("flowring_")] = int(total)
        return out


class SchedulerMetrics(ServiceMetrics):
    """The scheduler's series on top of a service's."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.drafts = Counter("flowring_spec_decode_num_drafts", "Draft trees (or segments) verified.", registry=r)
        self.draft_tokens = Counter("flowring_spec_decode_num_draft_tokens", "Draft tokens verified.", registry=r)
        self.accepted_tokens = Counter("flowring_spec_decode_num_accepted_tokens", "Draft tokens accepted.",
                                       registry=r)
        self.requests = Counter("flowring_requests", "Finished requests, by outcome.", ["outcome"], registry=r)
        self.request_seconds = Histogram("flowring_request_latency_seconds", "Submission to reply.",
                                         buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft_seconds = Histogram("flowring_time_to_first_token_seconds", "Submission to the first token.",
                                      buckets=LATENCY_BUCKETS_S, registry=r)
        self.prunes = Counter("flowring_prune_events", "Prune events issued.", registry=r)
        self.expands = Counter("flowring_expand_commands", "Expand commands issued to the drafter.", registry=r)
        self.round_restarts = Counter("flowring_round_restarts",
                                      "Rounds ended because the next token was not in the draft tree.", registry=r)


def serve_metrics(metrics: ServiceMetrics, host: str, port: int) -> None:
    """Serve ``metrics`` at ``http://host:port/metrics`` from a daemon thread (port 0: do nothing)."""
    if port:
        start_http_server(port, addr=host, registry=metrics.registry)
