"""Proof on a real LAN of namespaces: each board runs `flowring agent`, announcing itself over mDNS
(multicast across the bridge); the head's `flowring scan` lists them, `flowring init` writes an inventory
whose layer split is the planner's for the measured speeds and memory, and `flowring up --cluster` starts
the ring over SSH from it, with greedy output equal to transformers' generate. The commands and their
output are saved as a transcript (infra/results/lan_discovery.txt with FLOWRING_DOC_ARTIFACTS=1). Skipped (with the reason) without root,
ip or sshd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.cluster.inventory import load_inventory
from common.cluster.layout import layer_ranges
from common.cluster.partition import format_ranges, layer_costs
from common.cluster.settings import ClusterSpec
from services.cli.main import app
from services.launcher import client_for
from tests.support.netns import NetnsLan, unavailable
from tests.support.reference import assert_greedy_on_random_prompts
from tests.support.tiny_models import make_tiny_pair

REPO = Path(__file__).resolve().parents[3]
TRANSCRIPT = REPO / "infra" / "results" / "lan_discovery.txt"
MEMORY_MIB = {"b1": 4096, "b2": 2048, "b3": 2048}  # b1 has the most: the scheduler and drafter go there
ANNOUNCED_TIMEOUT_S = 120.0  # an agent measures its speed (one torch forward) before it announces
WHY_NOT = unavailable()
pytestmark = [pytest.mark.lan, pytest.mark.skipif(bool(WHY_NOT), reason=f"namespace LAN: {WHY_NOT}")]


@contextlib.contextmanager
def agents(lan: NetnsLan):
    """`flowring agent` in every board's namespace, each with its own FLOWRING_HOME; stopped afterwards.

    The first board measures its speed (the probe: seconds of CPU); the others start once it has announced,
    from a copy of its cache in their own homes (same machine, same probe key), and announce that figure
    read from their cache: one measurement instead of three on the test's shared cores."""
    procs = []

    def start(board) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "FLOWRING_HOME": str(board.root / "home")}
        log = open(board.root / "agent.log", "wb")  # noqa: SIM115 (closed with the process below)
        procs.append((subprocess.Popen(
            ["ip", "netns", "exec", board.netns, sys.executable, "-m", "services.cli.main", "agent",
             "--name", board.name, "--address", board.address, "--memory-mib", str(MEMORY_MIB[board.name]),
             "--dtype", "float32", "--threads", "1", "--group", f"test{os.getpid()}"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))

    def announced(boards) -> None:
        deadline = time.monotonic() + ANNOUNCED_TIMEOUT_S
        for board in boards:
            while b"announcing board" not in (board.root / "agent.log").read_bytes():
                assert time.monotonic() < deadline, (board.root / "agent.log").read_text()
                assert all(p.poll() is None for p, _ in procs), (board.root / "agent.log").read_text()
                time.sleep(0.2)

    first, *others = lan.boards
    try:
        start(first)
        announced([first])
        measured = first.root / "home" / "agent" / "speed.json"
        for board in others:
            (board.root / "home" / "agent").mkdir(parents=True)
            shutil.copyfile(measured, board.root / "home" / "agent" / "speed.json")
            start(board)
        announced(others)
        yield
    finally:
        for proc, log in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.close()


def test_scan_init_up_across_namespaces(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWRING_HOME", str(tmp_path / "head"))
    base, draft = make_tiny_pair(tmp_path / "pair", family="qwen2", seed=5)
    runner = CliRunner()
    transcript: list[str] = []

    def flowring(*args: str, expect: int = 0):
        result = runner.invoke(app, list(args))
        transcript.append(f"$ flowring {' '.join(args)}\n{result.output}")
        assert result.exit_code == expect, result.output
        return result

    group = f"test{os.getpid()}"
    cluster, run_dir = tmp_path / "lan.toml", tmp_path / "run"
    with NetnsLan(tmp_path / "lan", 3) as lan, agents(lan):
        where = ["--interface", lan.head_address, "--group", group]
        found = json.loads(runner.invoke(app, ["scan", *where, "--json"]).output)["boards"]
        assert {b["name"]: (b["address"], b["memory_mib"]) for b in found} == {
            b.name: (b.address, MEMORY_MIB[b.name]) for b in lan.boards}
        assert all(b["speed"] > 0 and b["home"] == str(lan.root / b["name"] / "home") for b in found)
        # b1 measured on its first start and cached the figure in its own home; b2 and b3 announced that figure
        # as read from the copy in their own homes.
        first, *others = lan.boards
        assert "(measured in " in (first.root / "agent.log").read_text()
        assert (first.root / "home" / "agent" / "speed.json").is_file()
        assert all("(cached; " in (b.root / "agent.log").read_text() for b in others)
        saved = json.loads((first.root / "home" / "agent" / "speed.json").read_text())["forwards_per_s"]
        assert all(b["speed"] == pytest.approx(saved, rel=1e-3) for b in found)  # announced to 4 digits
        listed = flowring("scan", *where)
        assert all(b.name in listed.output and b.address in listed.output for b in lan.boards)
        flowring("init", "--base", str(base), "--draft", str(draft), "--dtype", "float32", "--threads", "1",
                 "--kv-tokens", "256", "--overhead-mib", "100", "--identity", str(lan.identity),
                 "--known-hosts", str(lan.known_hosts), "--out", str(cluster), *where)
        inv = load_inventory(cluster)
        assert (inv.scheduler, inv.drafter, inv.stages, inv.verifier) == ("b1", "b1", ("b2", "b3"), "b3")
        speeds = {b["name"]: b["speed"] for b in found}
        assert {b.name: b.speed for b in inv.boards} == pytest.approx(speeds, rel=1e-3)
        auto = layer_ranges(_with_auto(cluster), layer_costs(base, 4), layer_costs(draft, 4))
        assert inv.layers == format_ranges(auto)  # the planner's split for these speeds and memory
        try:
            flowring("keys", "create", "--cluster", str(cluster))
            up = flowring("up", "--cluster", str(cluster), "--run-dir", str(run_dir))
            assert "flowring is up" in up.output
            spec = ClusterSpec.load(run_dir / "cluster.json")
            assert [s.layers for s in spec.stages] == auto
            with client_for(spec, 120) as client:
                assert_greedy_on_random_prompts(client, base, seed=4, prompts=2, longest=30, max_new_tokens=10)
            flowring("status", "--run-dir", str(run_dir))
        finally:
            if (run_dir / "boards.json").exists():
                flowring("down", "--run-dir", str(run_dir))
    # FLOWRING_DOC_ARTIFACTS=1 refreshes the README's transcript; otherwise it stays in the test's own folder.
    out = TRANSCRIPT if os.environ.get("FLOWRING_DOC_ARTIFACTS") == "1" else tmp_path / TRANSCRIPT.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_transcript(transcript, tmp_path, cluster))


def _with_auto(cluster: Path):
    """The inventory with ``layers = "auto"``: what `up` would split by itself."""
    data = tomllib.loads(cluster.read_text())
    data["placement"]["layers"] = "auto"
    from common.cluster.inventory import parse_inventory

    return parse_inventory(data)


def _transcript(steps: list[str], tmp_path: Path, cluster: Path) -> str:
    head = ("# `flowring agent` on three boards (network namespaces on a bridge, each with its own sshd), then\n"
            "# scan, init and up on the head, as tests/services/cluster/test_discovery_netns.py ran them; temporary paths\n"
            "# are shortened to $TMP. The inventory init wrote:\n")
    text = head + "".join(f"#   {line}\n" for line in cluster.read_text().splitlines()) + "\n" + "\n".join(steps)
    return text.replace(str(tmp_path), "$TMP")
