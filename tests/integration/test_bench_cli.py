"""``bench`` against a real tiny cluster (one process per service), unshaped and over emulated links."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.cluster.settings import ClusterSpec
from common.speculation.modes import MODES
from common.wire.client import GenerateReply
from services.cli import bench
from services.launcher import plan_local, start, stop
from services.run_folder import RunFolder
from tests.support.tiny_models import make_tiny_pair

PROMPTS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rings.", "Now a limerick."]},
    {"question_id": 101, "category": "reasoning", "turns": ["Who overtakes the second runner?"]},
    {"question_id": 121, "category": "coding", "turns": ["Write a function that reverses a list."]},
]
STAT_KEYS = {
    "request_id", "mode", "prompt_tokens", "new_tokens", "steps", "noop_steps", "rounds", "accepted_per_step",
    "tokens_per_step", "tokens_per_round", "prefill_ms", "decode_ms", "wall_ms", "decode_tokens_per_s",
    "tokens_per_s", "drafter_ms_per_step", "drafter_busy_ms", "services",
}
SUMMARY_KEYS = {
    "mode", "runs", "failures", "new_tokens", "decode_tokens_per_s", "tokens_per_s", "accepted_per_step",
    "tokens_per_step", "tokens_per_round", "rounds_per_run", "steps_per_run", "drafter_ms_per_step",
    "drafter_busy_ratio", "busy_ratio", "speedup",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    base, draft = make_tiny_pair(root / "pair", family="qwen2", seed=11)
    spec = plan_local(base, draft, 2, threads=1)
    start(spec, root / "run")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    try:
        yield root / "run", prompts
    finally:
        stop(root / "run")


def _bench(run_dir: Path, prompts: Path, out: Path, modes: str, *extra: str):
    args = ["--prompts", str(prompts), "--modes", modes, "--num-prompts", "3", "--max-new-tokens", "8",
            "--temperature", "0", "--seed", "1", "--warmup", "1", "--json", str(out), "--run-dir", str(run_dir),
            *extra]
    return CliRunner().invoke(bench.app, args)


def test_every_mode_recorded_summarised_and_plotted(cluster, tmp_path):
    run_dir, prompts = cluster
    out, png, timeline = tmp_path / "bench.json", tmp_path / "bench.png", tmp_path / "trace.json"
    modes = bench.BENCH_MODES
    result = _bench(run_dir, prompts, out, ",".join(modes), "--plot", str(png), "--trace", str(timeline))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"settings", "machine", "date", "command", "cluster", "records", "failures", "summary"}
    assert report["settings"]["modes"] == list(modes) and report["settings"]["num_prompts"] == 3
    assert report["machine"]["cores"] >= 1 and report["failures"] == []
    records = report["records"]
    assert [(r["prompt_id"], r["mode"]) for r in records] == [(p, m) for p in ("81", "101", "121") for m in modes]
    for r in (r for r in records if r["mode"] != "local"):
        assert r["ok"] and r["error"] == "" and set(r["stats"]) >= STAT_KEYS, r
        assert r["stats"]["mode"] == r["mode"] and 1 <= r["stats"]["new_tokens"] <= 8
        assert set(r["stats"]["services"]) == {"stage-1", "stage-2", "verifier"}
        assert set(r["stats"]["trace"]) == {"drafter", "stage-1", "stage-2", "verifier", "scheduler"}
    # fp32 tiny models: every ring mode's greedy output is transformers' own generate, token for token.
    assert report["equal_to_local"] == {m: {"equal": 3, "compared": 3} for m in MODES}
    summary = report["summary"]
    assert [s["mode"] for s in summary] == list(modes)
    for s in summary:
        assert set(s) == SUMMARY_KEYS and s["runs"] == 3 and s["failures"] == 0
        assert s["decode_tokens_per_s"] > 0
        assert set(s["speedup"]) == {"chunk", "ar", "local"} and all(v > 0 for v in s["speedup"].values())
        if s["mode"] != "local":
            assert list(s["busy_ratio"]) == ["stage-1", "stage-2", "verifier"]
            assert all(0 < v <= 1 for v in s["busy_ratio"].values())
    assert next(s for s in summary if s["mode"] == "chunk")["speedup"]["chunk"] == pytest.approx(1.0)
    for text in ("decode tok/s", "speedup vs chunk", "speedup vs local", "busy stage-1", "flowspec", "machine:",
                 "command:"):
        assert text in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    picture = tmp_path / "bench-timeline.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    events = json.loads(timeline.read_text())["traceEvents"]
    lanes = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert lanes == {"drafter", "stage-1", "stage-2", "verifier", "scheduler"}
    kinds = {e["name"] for e in events if e["ph"] == "X"}
    assert {"forward", "draft", "verify", "prune", "recv", "send", "schedule"} <= kinds


def test_shaped_links_still_succeed_and_take_longer(cluster, tmp_path):
    run_dir, prompts = cluster
    walls = {}
    for name, extra in (("plain", ()), ("shaped", ("--link-mbps", "50", "--link-latency-ms", "2"))):
        out = tmp_path / f"{name}.json"
        result = _bench(run_dir, prompts, out, "flowspec,ar", *extra)
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        assert all(r["ok"] for r in report["records"])
        walls[name] = sum(r["stats"]["wall_ms"] for r in report["records"])
    assert report["settings"]["link_mbps"] == 50 and "link 50 Mbps, 2 ms" in result.output
    # Each of the 6 generations crosses at least the 4 ring hops (2 ms each) before its first token.
    assert walls["shaped"] > walls["plain"] + 6 * 4 * 2.0, walls


class _FakeClient:
    """Answers like the scheduler would, except that every ``pipedec`` generation fails."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def generate(self, prompt, *, mode, **options):
        if mode == "pipedec":
            return GenerateReply(ok=False, error="pipedec: [not] implemented")
        stats = {"new_tokens": 5, "decode_ms": 10.0, "wall_ms": 20.0, "steps": 4, "noop_steps": 0, "rounds": 4,
                 "accepted_per_step": 0.0, "tokens_per_step": 1.0, "tokens_per_round": 1.0, "mode": mode,
                 "drafter_busy_ms": 0.0, "services": {"stage-1": {"busy_ms": 5.0, "forwards": 4, "rows": 4}}}
        return GenerateReply(ok=True, token_ids=(1, 2, 3, 4, 5), stats=stats)


def test_failures_reported_excluded_and_fatal_when_total(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunFolder(run_dir).cluster.write_text(ClusterSpec(base="b", draft="d").to_json())
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    monkeypatch.setattr(bench, "client_for", lambda spec, timeout: _FakeClient())
    out = tmp_path / "out.json"
    result = _bench(run_dir, prompts, out, "ar,pipedec")
    assert result.exit_code == 1
    assert "failed: mode pipedec, prompt 81: pipedec: [not] implemented" in result.output
    assert "pipedec failed on every prompt" in result.output
    report = json.loads(out.read_text())
    assert len(report["failures"]) == 3 and {f["mode"] for f in report["failures"]} == {"pipedec"}
    ar, pipedec = report["summary"]
    assert (ar["runs"], ar["failures"], pipedec["runs"], pipedec["failures"]) == (3, 0, 0, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modes", "ar,warp"], "--modes must name"),
        (["--prompts", "nope.jsonl"], "cannot read prompt file"),
        (["--run-dir", "elsewhere"], "no cluster in"),
    ],
)
def test_bad_arguments_fail_with_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunFolder(run_dir).cluster.write_text(ClusterSpec(base="b", draft="d").to_json())
    (tmp_path / "p.jsonl").write_text(json.dumps(PROMPTS[0]) + "\n")
    base = {"--prompts": "p.jsonl", "--modes": "ar", "--json": "out.json", "--run-dir": str(run_dir)}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = CliRunner().invoke(bench.app, [x for kv in base.items() for x in kv])
    assert result.exit_code == 1 and message in result.output


def test_a_reduced_draft_vocabulary_is_refused_with_a_head(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps(PROMPTS[0]) + "\n")
    result = CliRunner().invoke(bench.app, ["--prompts", str(tmp_path / "p.jsonl"), "--json", str(tmp_path / "o.json"),
                                            "--pin", "--draft-head", "h", "--draft-vocab", "64"])
    assert result.exit_code == 1 and "--draft-vocab applies to a draft model" in result.output


def test_bench_on_a_running_cluster_needs_no_json_option(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cluster.json").write_text(ClusterSpec(base="b", draft="d").to_json())
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    monkeypatch.setattr(bench, "client_for", lambda spec, timeout: _FakeClient())
    result = CliRunner().invoke(bench.app, ["--prompts", str(prompts), "--modes", "ar", "--warmup", "0",
                                            "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    (saved,) = (run_dir / "bench").glob("bench-*.json")
    assert f"json: {saved}" in result.output
    assert json.loads(saved.read_text())["summary"][0]["runs"] == len(PROMPTS)
