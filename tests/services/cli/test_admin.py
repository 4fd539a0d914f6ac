"""The admin commands through typer's CliRunner: status (against a fake scheduler), logs, version."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from typer.testing import CliRunner

from common.cluster.settings import ClusterSpec, Placement
from common.wire.client import ServiceHealth, StatusReply, StatusRequest
from common.wire.codec import PROTOCOL_VERSION, decode, encode
from services.cli import logs as logs_cli
from services.cli import status as status_cli
from services.cli.main import app
from services.run_folder import RunFolder

runner = CliRunner()
ROWS = (
    ServiceHealth("scheduler", "scheduler", "127.0.0.1", 100, ("tcp://127.0.0.1:7001",), (), True, 0.0, 9.0),
    ServiceHealth("stage", "stage-1", "127.0.0.1", 101, ("tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003"), (0, 2),
                  True, 0.4, 8.5, 1, 3 * 2**20, 12.5, "http://127.0.0.1:9101/metrics"),
    ServiceHealth("verifier", "verifier", "127.0.0.1", 102, ("tcp://127.0.0.1:7004",), (), False, 7.5, 8.0),
)


@pytest.fixture
def fake_scheduler(tmp_path: Path) -> Iterator[Path]:
    """A run folder whose cluster.json points at a ROUTER that answers every StatusRequest with ROWS."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            if router.poll(50):
                identity, *frames = router.recv_multipart()
                assert isinstance(decode(frames), StatusRequest)
                router.send_multipart([identity, *encode(StatusReply(ready=False, services=ROWS))])

    thread = threading.Thread(target=answer)
    thread.start()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = ClusterSpec(base="b", draft="d", scheduler=Placement("scheduler", client_port=port))
    RunFolder(run_dir).cluster.write_text(spec.to_json())
    yield run_dir
    stop.set()
    thread.join()
    router.close(0)


def test_status_json_lists_every_service(fake_scheduler: Path) -> None:
    result = runner.invoke(app, ["status", "--json", "--run-dir", str(fake_scheduler)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["ready"] is False
    assert [s["name"] for s in payload["services"]] == ["scheduler", "stage-1", "verifier"]
    stage = payload["services"][1]
    assert {"role", "name", "host", "pid", "endpoints", "healthy", "layers", "uptime_s", "in_flight",
            "kv_cache_bytes", "last_step_ms", "metrics"} <= set(stage)
    assert stage["endpoints"] == ["tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003"] and stage["layers"] == [0, 2]


def test_status_table_shows_health(fake_scheduler: Path) -> None:
    result = runner.invoke(app, ["status", "--run-dir", str(fake_scheduler)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("cluster not ready")
    assert "UNHEALTHY (7.5 s ago)" in result.output and "3.0 MiB" in result.output
    assert "http://127.0.0.1:9101/metrics" in result.output


def test_status_watch_refreshes_until_interrupted(fake_scheduler: Path, monkeypatch) -> None:
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_cli.time, "sleep", sleep)
    result = runner.invoke(app, ["status", "--watch", "--json", "--interval", "0.5", "--run-dir",
                                 str(fake_scheduler)])
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 2 and sleeps == [0.5, 0.5]


def test_status_without_a_cluster(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no cluster" in result.output


def test_status_when_nothing_answers(tmp_path: Path) -> None:
    with zmq.Context.instance().socket(zmq.PULL) as probe:  # a port that is surely closed afterwards
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    spec = ClusterSpec(base="b", draft="d", scheduler=Placement("scheduler", client_port=port))
    (tmp_path / "cluster.json").write_text(spec.to_json())
    result = runner.invoke(app, ["status", "--timeout", "0.3", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no cluster answering" in result.output and f":{port}" in result.output


def _line(ts: str, service: str, event: str, level: str = "info", **fields) -> str:
    return json.dumps({"ts": ts, "level": level, "service": service, "host": "h", "event": event, **fields}) + "\n"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "stage-1.log.1").write_text(_line("2026-12-01T00:00:00.500Z", "stage-1", "service_ready"))
    (logs / "stage-1.log").write_text(_line("2026-12-01T00:00:02.000Z", "stage-1", "start", request_id="r1")
                                      + _line("2026-12-01T00:00:04.000Z", "stage-1", "request_failed", "error",
                                              request_id="r1"))
    (logs / "scheduler.log").write_text(_line("2026-12-01T00:00:01.000Z", "scheduler", "service_ready")
                                        + "Traceback (most recent call last):\n"
                                        + _line("2026-12-01T00:00:03.000Z", "scheduler", "request_done",
                                                request_id="r1", new_tokens=8))
    return logs


def test_logs_merge_every_service_by_time_as_raw_json(log_dir: Path) -> None:
    result = runner.invoke(app, ["logs", "--run-dir", str(log_dir.parent)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 6
    events = [json.loads(ln)["event"] if ln.startswith("{") else "raw" for ln in lines]
    assert events == ["service_ready", "service_ready", "raw", "start", "request_done", "request_failed"]


@pytest.mark.parametrize(
    ("args", "events"),
    [
        (["--service", "scheduler"], ["service_ready", "Traceback (most recent call last):", "request_done"]),
        (["--request", "r1"], ["start", "request_done", "request_failed"]),
        (["--level", "error"], ["request_failed"]),
        (["--service", "stage-1", "--level", "info", "--request", "r1"], ["start", "request_failed"]),
    ],
)
def test_logs_filters(log_dir: Path, args: list[str], events: list[str]) -> None:
    result = runner.invoke(app, ["logs", *args, "--run-dir", str(log_dir.parent)])
    assert result.exit_code == 0, result.output
    got = [json.loads(ln)["event"] if ln.startswith("{") else ln for ln in result.output.splitlines()]
    assert got == events


def test_logs_pretty_lines_are_aligned(log_dir: Path) -> None:
    result = runner.invoke(app, ["logs", "--pretty", "--request", "r1", "--run-dir", str(log_dir.parent)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == "00:00:03.000 info    scheduler  r1     request_done new_tokens=8"


def test_logs_follow_prints_new_lines(log_dir: Path, monkeypatch) -> None:
    calls = []

    def sleep(_seconds: float) -> None:
        calls.append(1)
        if len(calls) == 1:
            with (log_dir / "verifier.log").open("a") as f:
                f.write(_line("2026-12-01T00:00:09.000Z", "verifier", "late_event"))
                f.write('{"partial": ')  # not yet a whole line: held back
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(logs_cli.time, "sleep", sleep)
    result = runner.invoke(app, ["logs", "-f", "--service", "verifier", "--run-dir", str(log_dir.parent)])
    assert result.exit_code == 0, result.output
    assert [json.loads(ln)["event"] for ln in result.output.splitlines()] == ["late_event"]


def test_logs_refuses_a_bad_level_and_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["logs", "--level", "loud", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "--level" in result.output
    result = runner.invoke(app, ["logs", "--run-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no logs" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["protocol"] == PROTOCOL_VERSION and {"flowring", "python", "torch"} <= set(info)
    plain = runner.invoke(app, ["version"])
    assert plain.exit_code == 0 and f"protocol {PROTOCOL_VERSION}" in plain.output
