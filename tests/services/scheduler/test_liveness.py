"""The scheduler's liveness bookkeeping: healthy iff heard within the timeout; silence is measured."""

from __future__ import annotations

from common.cluster.settings import ClusterSpec, Placement
from common.wire.reports import Heartbeat, Ready
from services.scheduler.liveness import Liveness

SPEC = ClusterSpec(
    base="b", draft="d",
    drafter=Placement("drafter", "10.0.0.1", cmd_port=7000, metrics_port=9100),
    stages=(Placement("stage-1", "10.0.0.2", data_port=7001, cmd_port=7002, layers=(0, 12)),),
    verifier=Placement("verifier", "10.0.0.3", data_port=7003, cmd_port=7004),
)
NAMES = ["drafter", "stage-1", "verifier"]


def beat(name: str, pid: int = 10, in_flight: int = 0) -> Heartbeat:
    return Heartbeat(name, pid, "board", 5.0, in_flight, 1024, 2.5, {"messages_handled": 3})


def test_healthy_only_within_the_timeout() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    assert not live.healthy("drafter", 0.0)  # never heard
    live.hear(Ready("drafter", 10), 100.0)
    assert live.healthy("drafter", 103.0)
    assert not live.healthy("drafter", 103.1)  # Ready is not trusted forever
    live.hear(beat("drafter"), 103.5)
    assert live.healthy("drafter", 106.0)


def test_all_healthy_needs_every_service() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    for name in NAMES[:-1]:
        live.hear(Ready(name, 1), 0.0)
    assert not live.all_healthy(1.0)
    live.hear(Ready("verifier", 1), 0.5)
    assert live.all_healthy(1.0)


def test_strangers_are_ignored() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    live.hear(beat("intruder"), 0.0)
    assert not live.healthy("intruder", 0.0)
    assert [r.name for r in live.health(SPEC, 0.0)] == NAMES


def test_silence_counts_from_the_request_start_at_the_earliest() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    for name in NAMES:
        live.hear(beat(name), 0.0)
    assert live.silent(since=10.0, now=12.0) == []  # the request began 2 s ago
    live.hear(beat("drafter"), 12.0)
    live.hear(beat("verifier"), 12.0)
    assert live.silent(since=10.0, now=13.5) == [("stage-1", 3.5)]


def test_health_rows_merge_the_cluster_file_and_the_last_heartbeat() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    live.hear(beat("stage-1", pid=42, in_flight=1), 1.0)
    drafter, stage, verifier = live.health(SPEC, 2.0)
    assert (drafter.role, drafter.pid, drafter.healthy, drafter.last_seen_s) == ("drafter", 0, False, -1.0)
    assert drafter.metrics == "http://10.0.0.1:9100/metrics"
    assert stage.role == "stage" and stage.layers == (0, 12) and stage.pid == 42 and stage.healthy
    assert stage.endpoints == ("tcp://10.0.0.2:7001", "tcp://10.0.0.2:7002")
    assert (stage.in_flight, stage.kv_cache_bytes, stage.last_step_ms, stage.last_seen_s) == (1, 1024, 2.5, 1.0)
    assert verifier.role == "verifier" and verifier.layers == () and verifier.metrics == ""


def test_a_ready_after_restart_drops_the_old_heartbeat() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    live.hear(beat("stage-1", pid=42, in_flight=1), 0.0)
    live.hear(Ready("stage-1", 43), 1.0)
    row = live.health(SPEC, 1.0)[1]
    assert (row.pid, row.in_flight) == (43, 0)


def test_a_ready_under_a_new_pid_reports_the_restart() -> None:
    live = Liveness(NAMES, timeout_s=3.0)
    assert live.hear(Ready("stage-1", 10), 0.0) == 0  # the first start
    assert live.hear(beat("stage-1", pid=10), 0.5) == 0
    assert live.hear(Ready("stage-1", 10), 1.0) == 0  # the same process again
    assert live.hear(Ready("stage-1", 42), 2.0) == 10  # restarted: the old pid
    assert live.hear(beat("stage-1", pid=42), 2.5) == 0
