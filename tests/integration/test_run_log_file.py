"""``python -m services.run --log-file``: a real service process writes its JSON lines to its own file,
heartbeats, and stops on Shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import zmq

from common.cluster.settings import Timeouts
from common.wire.codec import decode, encode
from common.wire.commands import Shutdown
from common.wire.reports import Heartbeat, Ready
from services.launcher import plan_local
from tests.support.tiny_models import make_tiny_pair


def test_a_service_logs_to_its_file_and_heartbeats(tmp_path: Path) -> None:
    base, draft = make_tiny_pair(tmp_path / "pair", seed=2)
    spec = plan_local(base, draft, 1, threads=1, timeouts=Timeouts(heartbeat_interval_s=0.1))
    cluster = tmp_path / "cluster.json"
    cluster.write_text(spec.to_json())
    ctx = zmq.Context.instance()
    reports = ctx.socket(zmq.PULL)  # stands in for the scheduler's report socket
    reports.setsockopt(zmq.LINGER, 0)
    reports.bind(spec.scheduler.endpoint(spec.scheduler.report_port))
    log_file = tmp_path / "logs" / "drafter.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.run", "--cluster", str(cluster), "--service", "drafter",
                             "--log-file", str(log_file)], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    commands = ctx.socket(zmq.PUSH)
    commands.setsockopt(zmq.LINGER, 0)
    commands.connect(spec.drafter.endpoint(spec.drafter.cmd_port))
    try:
        got = []
        while len(got) < 3 and reports.poll(60_000):
            got.append(decode(reports.recv_multipart()))
        assert isinstance(got[0], Ready) and all(isinstance(m, Heartbeat) for m in got[1:]), got
        assert got[1].service == "drafter" and got[1].pid == proc.pid
        commands.send_multipart(encode(Shutdown(cmd_seq=-1)))
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        commands.close(0)
        reports.close(0)
    assert proc.returncode == 0
    assert output == b""  # everything went to the file
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e["event"] for e in events] == ["draft_loaded", "service_ready", "service_shutdown"]
    assert all(e["service"] == "drafter" and e["host"] and e["ts"].endswith("Z") for e in events)
