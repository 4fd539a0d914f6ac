"""`flowring up` / `down` / `generate` as a new user meets them, without starting a cluster."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from common.cluster.settings import ClusterSpec, Placement
from common.wire.client import GenerateReply, StatusReply
from services.cli import main
from services.cli.main import app
from services.launcher import free_ports
from services.run_folder import RunFolder

runner = CliRunner()


def test_up_help_shows_the_defaults_make_up_uses():
    result = runner.invoke(app, ["up", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    stages = next(ln for ln in result.output.splitlines() if "--stages" in ln)
    dtype = next(ln for ln in result.output.splitlines() if "--dtype" in ln)
    assert "[default: auto]" in stages and "[default: bfloat16]" in dtype
    assert "--cluster" in result.output


def test_up_refuses_a_second_cluster_before_starting_anything(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "boards.json").write_text("{}")
    result = runner.invoke(app, ["up", "--model", "smollm2", "--run-dir", str(run_dir)])
    assert result.exit_code == 1
    assert "already running" in result.output and "starting" not in result.output


@pytest.mark.parametrize("flag", [["--model", "smollm2"], ["--draft-vocab", "32768"]])
def test_up_cluster_takes_models_from_the_file(tmp_path, flag):
    result = runner.invoke(app, ["up", "--cluster", str(tmp_path / "c.toml"), *flag, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and "--cluster takes the models" in result.output


def test_up_cluster_reports_each_inventory_problem_on_its_own_line(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[models]\ndtype = "int4"\n')
    result = runner.invoke(app, ["up", "--cluster", str(bad), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) >= 3 and any("no boards" in ln for ln in errors) and any("int4" in ln for ln in errors)


def test_down_without_a_cluster_removes_a_stale_cluster_file(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunFolder(run_dir).cluster.write_text("{}")
    result = runner.invoke(app, ["down", "--run-dir", str(run_dir)])
    assert result.exit_code == 0 and "no cluster running" in result.output
    assert not RunFolder(run_dir).cluster.exists()
    assert runner.invoke(app, ["generate", "hi", "--run-dir", str(run_dir)]).exit_code == 1


def _spec_file(tmp_path, port: int):
    spec = ClusterSpec(base="b", draft="d", scheduler=Placement("scheduler", report_port=port, client_port=port))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunFolder(run_dir).cluster.write_text(spec.to_json())
    return run_dir


def test_generate_says_when_the_cluster_cannot_be_reached(tmp_path):
    run_dir = _spec_file(tmp_path, free_ports("127.0.0.1", 1)[0])  # nothing listens there
    result = runner.invoke(app, ["generate", "hi", "--timeout", "600", "--run-dir", str(run_dir)])
    assert result.exit_code == 1
    assert f"within {main.REACH_TIMEOUT_S:.0f} s" in result.output  # the short reach check, not --timeout


class _FakeClient:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def status(self, timeout_s):
        return StatusReply(ready=True)

    def generate(self, prompt, **options):
        stats = {"new_tokens": 8, "wall_ms": 2000.0, "tokens_per_s": 4.0, "decode_tokens_per_s": 5.0}
        return GenerateReply(ok=True, text="a ring of text", token_ids=tuple(range(8)), stats=stats)


def test_plain_generate_prints_the_speed_after_the_text_on_stderr(tmp_path, monkeypatch):
    run_dir = _spec_file(tmp_path, 1)
    monkeypatch.setattr(main, "client_for", lambda spec, timeout: _FakeClient())
    result = runner.invoke(app, ["generate", "hi", "--run-dir", str(run_dir)])
    assert result.exit_code == 0
    assert result.stdout == "a ring of text\n"
    assert result.stderr == "8 tokens in 2.00 s: 4.0 tokens/s (5.0 after the prompt)\n"
    as_json = runner.invoke(app, ["generate", "hi", "--json", "--run-dir", str(run_dir)])
    assert json.loads(as_json.stdout)["text"] == "a ring of text" and as_json.stderr == ""


@pytest.mark.parametrize(("flags", "expected"), [
    (["--device", "gpu"], "--device: device 'gpu' is not cpu, cuda or cuda:N"),
    (["--devices", "cuda:0,tpu"], "--devices: device 'tpu' is not cpu, cuda or cuda:N"),
    (["--devices", "cuda:0,cuda:3"], "requested, "),  # cuda:0 too when this machine has no GPU
    (["--nondeterministic", "--devices", "cpu,cuda:x"], "--devices: device 'cuda:x' is not cpu, cuda or cuda:N"),
])
def test_up_refuses_a_bad_device_in_one_line_before_starting_anything(tmp_path, flags, expected):
    result = runner.invoke(app, ["up", "--model", "smollm2", *flags, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1 and expected in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_up_tree_names_a_bad_key_and_the_known_ones(tmp_path):
    result = runner.invoke(app, ["up", "--model", "smollm2", "--tree", "depth=3", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "unknown tree setting 'depth'; known: top_k" in result.output and "starting" not in result.output


def test_up_tree_settings_reach_every_service(tmp_path, monkeypatch):
    from services.cli import cluster
    from tests.support.tiny_models import make_tiny_pair

    base, draft = make_tiny_pair(tmp_path)
    started: list[ClusterSpec] = []
    monkeypatch.setattr(cluster, "start", lambda spec, run_dir, log_level, **_: started.append(spec))
    result = runner.invoke(app, ["up", "--base", str(base), "--draft", str(draft), "--stages", "2", "--mode", "ar",
                                 "--dtype", "float32", "--api-port", "0", "--tree", "node_cap=64", "--tree",
                                 "expansion=redraft", "--tree", "adaptive=false", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    tree = started[0].draft_settings
    assert (tree.node_cap, tree.expansion, tree.adaptive) == (64, "redraft", False)
    assert started[0].default_mode == "ar" and len(started[0].stages) == 2
