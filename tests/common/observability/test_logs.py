"""Log setup: JSON lines with the fixed fields, contextvars bound per request, a rotated file."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from common.observability import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger("flowring").handlers.clear()
    structlog.contextvars.clear_contextvars()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_carry_the_fixed_and_bound_fields(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "stage-9.log"
    logs.configure("info", service="stage-9", log_file=path)
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(request_id="r7", round=2, step=5):
        log.info("segment_done", rows=4)
    log.debug("too_chatty")
    worker = threading.Thread(target=lambda: log.warning("from_a_link_thread"))  # no contextvars there
    worker.start()
    worker.join()
    first, second = _lines(path)
    assert {k: first[k] for k in ("level", "service", "event", "request_id", "round", "step", "rows")} == {
        "level": "info", "service": "stage-9", "event": "segment_done", "request_id": "r7", "round": 2, "step": 5,
        "rows": 4,
    }
    assert first["ts"].endswith("Z") and first["host"]
    assert second["event"] == "from_a_link_thread" and second["service"] == "stage-9" and "request_id" not in second


def test_the_log_file_rotates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logs, "LOG_FILE_MAX_BYTES", 2000)
    monkeypatch.setattr(logs, "LOG_FILE_BACKUPS", 2)
    path = tmp_path / "verifier.log"
    logs.configure("info", service="verifier", log_file=path)
    log = structlog.get_logger()
    for i in range(200):
        log.info("tick", i=i)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verifier.log", "verifier.log.1", "verifier.log.2"]
    assert path.stat().st_size <= 2000
    assert _lines(path)[-1]["i"] == 199


def test_exceptions_are_rendered_into_the_line(tmp_path: Path) -> None:
    path = tmp_path / "drafter.log"
    logs.configure("info", service="drafter", log_file=path)
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        structlog.get_logger().exception("request_failed")
    (line,) = _lines(path)
    assert line["level"] == "error" and "RuntimeError: kaboom" in line["exception"]
