"""The board agent: probe, alive and stop, run here as the head runs them on a board."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from services.cluster import board_agent
from services.cluster.bringup import _probe_problems
from tests.common.cluster.test_inventory import EXAMPLE

REPO = Path(__file__).resolve().parents[3]


def test_probe_reports_version_torch_memory_and_taken_ports():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            free = other.getsockname()[1]
        answer = board_agent.probe("127.0.0.1", [busy, free])
    version = tomllib.loads((EXAMPLE.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert answer["flowring"] == version and answer["torch"] and answer["mem_available_mib"] > 0
    assert answer["busy_ports"] == [busy]


def test_probe_reads_torch_from_its_metadata_without_importing_it(monkeypatch):
    probed = subprocess.run(
        [sys.executable, "-c", "import sys, json; from services.cluster import board_agent; "
         "answer = board_agent.probe('127.0.0.1', []); print(json.dumps([answer['torch'], 'torch' in sys.modules]))"],
        capture_output=True, text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    import torch

    assert json.loads(probed.stdout) == [torch.__version__, False]

    def absent(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", absent)
    assert board_agent.probe("127.0.0.1", [])["torch"] == ""  # what the head reports as "torch is missing"


def test_have_lists_the_held_slices_of_those_wanted(tmp_path, capsys):
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc.partial").mkdir()
    board_agent.main(["have", "--slices", str(tmp_path), "--want", "abc", "def"])
    assert json.loads(capsys.readouterr().out) == {"have": ["abc"]}


def test_stop_escalates_to_kill_and_leaves_nothing():
    stubborn = subprocess.Popen(["sh", "-c", 'trap "" TERM; sleep 60 & wait'], start_new_session=True)
    assert board_agent.alive([stubborn.pid]) == [stubborn.pid]
    assert board_agent.stop([stubborn.pid], grace_s=0.1) == []
    stubborn.wait(timeout=5)
    assert board_agent.alive([stubborn.pid]) == []


def test_main_prints_one_json_object(capsys):
    board_agent.main(["alive", "--pids", "999999999"])
    assert json.loads(capsys.readouterr().out) == {"alive": []}


def test_a_failing_board_is_one_line_naming_every_problem():
    probe = {"flowring": "0.0.9", "python": "3.11.2", "torch": "", "mem_available_mib": 100,
             "busy_ports": [7700, 7701], "have": []}
    line = _probe_problems("board b1 (u@h:22)", probe, "0.1.0", 200 * 1024 * 1024)
    assert "\n" not in line and line.startswith("board b1 (u@h:22): flowring 0.0.9 there, 0.1.0 here")
    assert "torch is missing" in line and "100 MiB available" in line and "port(s) 7700, 7701" in line
    healthy = {**probe, "flowring": "0.1.0", "torch": "2.13", "busy_ports": [], "mem_available_mib": 4096}
    assert _probe_problems("board b1", healthy, "0.1.0", 1024) == ""
