"""``bench --concurrency`` and ``bench --ttft`` against real tiny clusters (one process per service)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.cluster.settings import ClusterSpec
from services.cli import bench
from services.launcher import plan_local, start, stop
from services.run_folder import RunFolder
from tests.support.tiny_models import make_tiny_pair

PROMPTS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rings."]},
    {"question_id": 101, "category": "reasoning", "turns": ["Who overtakes the second runner?"]},
    {"question_id": 121, "category": "coding", "turns": ["Write a function that reverses a list."]},
]
IDS = ["81", "101", "121"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base, draft = make_tiny_pair(root / "pair", family="qwen2", seed=11)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return base, draft, prompts


@pytest.fixture(scope="module")
def cluster(models, tmp_path_factory):
    base, draft, _ = models
    run_dir = tmp_path_factory.mktemp("cluster") / "run"
    start(plan_local(base, draft, 2, threads=1), run_dir)
    try:
        yield run_dir
    finally:
        stop(run_dir)


def _bench(prompts: Path, out: Path, *extra: str):
    args = ["--prompts", str(prompts), "--num-prompts", "3", "--max-new-tokens", "8", "--temperature", "0",
            "--warmup", "1", "--json", str(out), *extra]
    return CliRunner().invoke(bench.app, args)


def test_concurrency_reports_both_phases_latencies_and_equality(models, cluster, tmp_path):
    out = tmp_path / "c.json"
    result = _bench(models[2], out, "--run-dir", str(cluster), "--concurrency", "3", "--modes", "flowspec,ar")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"settings", "machine", "date", "command", "cluster", "concurrency", "ttft"}
    assert report["ttft"] == [] and report["prompts"] == IDS
    assert [r["mode"] for r in report["concurrency"]] == ["flowspec", "ar"]
    for r in report["concurrency"]:
        assert r["concurrency"] == 3 and r["equal_to_solo"] == {"equal": 3, "compared": 3}
        assert r["solo"]["tokens_per_s"] > 0 and r["concurrent"]["tokens_per_s"] > 0 and r["speedup"] > 0
        assert r["solo"]["new_tokens"] == r["concurrent"]["new_tokens"] == sum(
            q["solo"]["new_tokens"] for q in r["requests"])
        assert [q["prompt_id"] for q in r["requests"]] == IDS
        for phase in ("solo", "concurrent"):  # every ring service's load, from its Prometheus counters
            services = r[phase]["services"]
            assert set(services) == {"drafter", "stage-1", "stage-2", "verifier"}, services
            assert all(0 < services[name]["busy_ratio"] <= 1.05 for name in ("stage-1", "stage-2", "verifier"))
            assert all(services[name]["rows_per_forward"] >= 1 for name in ("stage-1", "stage-2", "verifier"))
        for q in r["requests"]:
            assert q["equal"] and q["slowdown"] > 0
            for run in (q["solo"], q["concurrent"]):
                assert run["ok"] and 1 <= run["new_tokens"] <= 8
                assert 0 < run["ttft_ms"] <= run["latency_ms"]
    for text in ("solo", "3 in flight", "per request", "slowdown", "outputs equal to solo: 3/3", "mode ar", "per service",
                 "machine:", "command:"):
        assert text in result.output


def test_ttft_on_a_cluster_started_for_the_run(models, tmp_path, monkeypatch):
    """--pin's own cluster and API server; pinning itself is left out (this host may have too few cores)."""
    base, draft, prompts = models
    monkeypatch.setattr(bench, "pinning_for", lambda cores: None)
    out = tmp_path / "t.json"
    result = _bench(prompts, out, "--ttft", "--repeats", "2", "--pin", "--base", str(base), "--draft", str(draft),
                    "--layers", "0-1,1-4", "--cores-per-service", "1", "--dtype", "float32",
                    "--fused-numerics")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["concurrency"] == [] and report["cluster"]["default_mode"] == "flowspec"
    assert [tuple(s["layers"]) for s in report["cluster"]["stages"]] == [(0, 1), (1, 4)]
    assert report["cluster"]["row_invariant"] is False
    assert report["drafter_loop"] == "drain"  # so `flowring project` models the loop this run had
    (ttft,) = report["ttft"]
    assert ttft["mode"] == "flowspec" and ttft["repeats"] == 2 and ttft["failures"] == []
    assert len(ttft["ring_ms"]) == len(ttft["http_ms"]) == 2 * len(PROMPTS)
    assert all(ms > 0 for ms in ttft["ring_ms"] + ttft["http_ms"])
    assert ttft["ratio"] == pytest.approx(ttft["http_median_ms"] / ttft["ring_median_ms"])
    for text in ("time to first streamed token", "ring median ms", "http median ms", "http / ring"):
        assert text in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--concurrency", "2", "--modes", "local,ar"], "cannot include local"),
        (["--ttft", "--plot", "p.png"], "--plot and --trace go with the mode comparison"),
        (["--concurrency", "-1"], "Invalid value"),
    ],
)
def test_bad_serving_arguments_fail_with_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunFolder(run_dir).cluster.write_text(ClusterSpec(base="b", draft="d").to_json())
    (tmp_path / "p.jsonl").write_text(json.dumps(PROMPTS[0]) + "\n")
    result = CliRunner().invoke(bench.app, ["--prompts", "p.jsonl", "--json", "out.json", "--run-dir", str(run_dir),
                                            *args])
    assert result.exit_code != 0 and message in result.output


def test_pinned_layer_ranges_must_cover_the_model(models, tmp_path):
    base, draft, prompts = models
    result = _bench(prompts, tmp_path / "x.json", "--pin", "--base", str(base), "--draft", str(draft),
                    "--layers", "0-1,2-4")
    assert result.exit_code == 1 and "ranges must be contiguous" in result.output
