"""The real ring: one OS process per service, PUSH/PULL over TCP on loopback, tiny random models."""

from __future__ import annotations

import json
import urllib.request

import pytest
from typer.testing import CliRunner

from common.cluster.settings import ClusterSpec
from common.speculation.modes import DraftSettings
from services.cli.main import app
from services.launcher import client_for, free_ports, plan_local, start, stop
from services.run_folder import RunFolder
from tests.support.processes import process_environment
from tests.support.reference import assert_greedy_on_random_prompts_concurrently, greedy_reference
from tests.support.tiny_models import make_tiny_pair

TREES = DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"), family="qwen2", seed=11)


@pytest.mark.parametrize("stages", [1, 2, 4])
def test_greedy_output_equals_base_generate_over_tcp(pair, stages, tmp_path, monkeypatch):
    base, draft = pair
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    spec = plan_local(base, draft, stages, draft_settings=TREES, threads=1)
    start(spec, tmp_path / "run")
    try:
        # The services share this host's cores: their OpenMP threads sleep while they wait, never spin.
        pids = json.loads((tmp_path / "run" / "pids.json").read_text())
        assert {process_environment(pids[p.name]).get("OMP_WAIT_POLICY") for p in spec.ring} == {"PASSIVE"}
        # The first prompt alone, then the other 19 from 4 clients at once (the scheduler runs 4): each reply equal
        # to generate on its own prompt, whatever rows rode beside it.
        replies = assert_greedy_on_random_prompts_concurrently(lambda: client_for(spec, 120), base, seed=stages,
                                                               prompts=20, longest=80, max_new_tokens=16, clients=4)
        for reply in replies:
            assert reply.stats["steps"] >= 1
            assert set(reply.stats["services"]) == {p.name for p in spec.ring if p.name != "drafter"}
    finally:
        stopped = stop(tmp_path / "run")
    assert len(stopped) == stages + 3


@pytest.mark.exec_services  # `flowring up` as users start it: every service a fresh `python -m services.run`
def test_cli_up_generate_status_down(pair, tmp_path, monkeypatch):
    base, draft = pair
    monkeypatch.setenv("FLOWRING_HOME", str(tmp_path / "home"))
    run_dir = str(tmp_path / "run")
    runner = CliRunner()
    api_port = free_ports("127.0.0.1", 1)[0]
    # An explicit budget: on shared cores (CI's 2) up's default is the root alone, and the trees would go untested.
    result = runner.invoke(app, ["up", "--base", str(base), "--draft", str(draft), "--layers", "0-1,1-4",
                                 "--threads", "1", "--api-port", str(api_port), "--speculation-budget", "128",
                                 "--run-dir", run_dir])
    assert result.exit_code == 0, result.output
    assert "flowring is up" in result.output and f"OpenAI API: http://127.0.0.1:{api_port}/v1" in result.output
    assert "speculation budget: 128 draft nodes" in result.output
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/models", timeout=10) as answer:
            assert json.loads(answer.read())["data"][0]["id"] == base.name
        result = runner.invoke(app, ["status", "--run-dir", run_dir])
        assert result.exit_code == 0 and "cluster ready" in result.output
        result = runner.invoke(app, ["generate", "hello ring", "--max-new-tokens", "12", "--json", "--raw",
                                     "--run-dir", run_dir])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        assert len(payload["token_ids"]) <= 12 and payload["token_ids"]
        assert {"steps", "rounds", "tokens_per_step", "wall_ms"} <= set(payload["stats"])
        for mode in ("ar", "chunk"):
            other = runner.invoke(app, ["generate", "hello ring", "--max-new-tokens", "12", "--json", "--raw",
                                        "--mode", mode, "--run-dir", run_dir])
            assert other.exit_code == 0, other.output
            assert json.loads(other.output)["token_ids"] == payload["token_ids"]  # every mode is lossless
        bad = runner.invoke(app, ["generate", "x", "--mode", "nonsense", "--run-dir", run_dir])
        assert bad.exit_code == 1 and "mode" in bad.output
        again = runner.invoke(app, ["up", "--base", str(base), "--draft", str(draft), "--run-dir", run_dir])
        assert again.exit_code == 1 and "already running" in again.output
    finally:
        result = runner.invoke(app, ["down", "--run-dir", run_dir])
    assert result.exit_code == 0 and "stopped 6 service(s)" in result.output  # five services and the API
    result = runner.invoke(app, ["status", "--run-dir", run_dir])
    assert result.exit_code == 1


def test_mismatched_tokenizers_refused_at_startup(tmp_path):
    from transformers import AutoTokenizer

    from tests.support.tiny_models import make_tiny_model

    base, _ = make_tiny_pair(tmp_path / "a", seed=1)
    other = make_tiny_model(tmp_path / "b", vocab=400, seed=2)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<an-extra-token>"])
    tokenizer.save_pretrained(other)
    result = CliRunner().invoke(app, ["up", "--base", str(base), "--draft", str(other), "--run-dir",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "tokenizer" in result.output.lower()


def test_cli_up_with_a_reduced_draft_vocabulary_and_fused_numerics(tmp_path, monkeypatch):
    base, draft = make_tiny_pair(tmp_path / "pair", family="qwen2", seed=12)
    monkeypatch.setenv("FLOWRING_HOME", str(tmp_path / "home"))
    run_dir = str(tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--base", str(base), "--draft", str(draft), "--draft-vocab", "64",
                                 "--stages", "1", "--threads", "1", "--api-port", "0", "--fused-numerics",
                                 "--speculation-budget", "128", "--run-dir", run_dir])
    assert result.exit_code == 0, result.output
    assert "over 64 of 320 tokens" in result.output
    assert (draft / "draft_vocab_64.pt").is_file()
    try:
        spec = ClusterSpec.load(RunFolder(tmp_path / "run").cluster)
        assert spec.draft_vocab == 64 and spec.row_invariant is False
        with client_for(spec, 120) as client:
            for prompt in ([5, 6, 7], [40, 2, 99, 17, 3]):
                reply = client.generate("", prompt_ids=tuple(prompt), max_new_tokens=12, mode="flowspec")
                assert reply.ok, reply.error
                assert list(reply.token_ids) == greedy_reference(base, prompt, 12)
    finally:
        runner.invoke(app, ["down", "--run-dir", run_dir])
    refused = runner.invoke(app, ["up", "--base", str(base), "--draft-head", "h", "--draft-vocab", "64",
                                  "--run-dir", run_dir])
    assert refused.exit_code == 1 and "--draft-vocab applies to a draft model" in refused.output
