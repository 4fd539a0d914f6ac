"""`flowring up` drafts with the head shipped for its base, says so, and keeps the draft model one flag away."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.cluster.machine_defaults import choose_mode
from common.speculation.heads import shipped
from common.speculation.heads.shipped import head_for_base, shipped_heads
from services.cli import cluster
from services.cli.cluster import choose_drafting
from services.cli.main import app
from tests.support.shipped_head import base_with_shipped_head


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A base with a shipped head (in a shipped folder of its own), and another base."""
    root = tmp_path_factory.mktemp("default-head")
    base, _, other = base_with_shipped_head(root, num_layers=2, extra={
        "acceptance": {"code": {"tokens_per_round": 3.5}, "prose": {"tokens_per_round": 2.5}}})
    return base, other, root / "shipped"


@pytest.fixture
def shipped_root(bases, monkeypatch) -> Path:
    monkeypatch.setattr(shipped, "SHIPPED_DIR", bases[2])
    return bases[2]


def test_the_head_shipped_for_a_base_is_found_and_no_other(bases, shipped_root) -> None:
    base, other, _ = bases
    assert shipped_heads(shipped_root) == [shipped_root / "tiny-base"]
    assert head_for_base(base) == shipped_root / "tiny-base"
    assert head_for_base(other) is None  # same architecture fields, another embedding


def test_the_choice_of_drafter(bases, shipped_root) -> None:
    base, other, _ = bases
    chosen = choose_drafting(base, draft="", draft_head="", no_head=False, fallback_draft="small")
    assert chosen.head == (shipped_root / "tiny-base").resolve() and not chosen.draft
    assert "shipped" in chosen.note and "code 3.50, prose 2.50" in chosen.note and "--no-head" in chosen.note
    assert choose_drafting(base, draft="", draft_head="", no_head=True, fallback_draft="small").draft == "small"
    assert choose_drafting(base, draft="mine", draft_head="", no_head=False, fallback_draft="small").draft == "mine"
    fallback = choose_drafting(other, draft="", draft_head="", no_head=False, fallback_draft="small")
    assert fallback.head is None and fallback.draft == "small" and "no head" in fallback.note
    with pytest.raises(ValueError, match="--draft"):
        choose_drafting(other, draft="", draft_head="", no_head=False, fallback_draft="")


def test_up_drafts_with_the_shipped_head_and_says_so(bases, shipped_root, tmp_path, monkeypatch) -> None:
    base, _, _ = bases
    started = []
    monkeypatch.setattr(cluster, "start", lambda spec, run_dir, log_level, **_: started.append(spec))
    result = CliRunner().invoke(app, ["up", "--base", str(base), "--stages", "1", "--api-port", "0",
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert started[0].draft_head == str((shipped_root / "tiny-base").resolve()) and not started[0].draft
    assert "drafting with the head tiny-base shipped for this base" in result.output
    other = bases[1]
    result = CliRunner().invoke(app, ["up", "--base", str(base), "--draft", str(other), "--stages", "1",
                                      "--api-port", "0", "--run-dir", str(tmp_path / "run2")])
    assert result.exit_code == 0, result.output
    assert started[-1].draft == str(other.resolve()) and started[-1].draft_head == ""
    result = CliRunner().invoke(app, ["up", "--base", str(base), "--no-head", "--stages", "1", "--api-port", "0",
                                      "--run-dir", str(tmp_path / "run3")])
    assert result.exit_code == 1 and "--draft" in result.output and len(started) == 2


def test_pull_says_whether_the_shipped_head_fits_the_pulled_base(bases, shipped_root) -> None:
    from services.cli.models import _shipped_head_line

    base, other, _ = bases
    assert "ships for it and matches it (code 3.50, prose 2.50" in _shipped_head_line("tiny-base", base)
    assert "does not fit this base" in _shipped_head_line("tiny-base", other)
    assert _shipped_head_line("no-such-base", base) == ""


def test_the_default_mode_counts_a_head_drafter_as_one_core() -> None:
    assert choose_mode(2, 1, drafter="head").mode == "ar"
    assert choose_mode(5, 1, drafter="head").mode == "flowspec"
    assert choose_mode(5, 1, drafter="model").mode == "ar"
    assert "head" in choose_mode(2, 1, drafter="head").reason


def test_a_shipped_head_under_the_default_bar_stays_one_flag_away(bases, tmp_path, monkeypatch) -> None:
    import json
    import shutil

    base, _, root = bases
    weak_root = tmp_path / "shipped"
    shutil.copytree(root / "tiny-base", weak_root / "tiny-base")
    config = weak_root / "tiny-base" / "config.json"
    body = json.loads(config.read_text())
    body["acceptance"] = {"code": {"tokens_per_round": 2.91}, "prose": {"tokens_per_round": 1.67}}
    config.write_text(json.dumps(body))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", weak_root)
    chosen = choose_drafting(base, draft="", draft_head="", no_head=False, fallback_draft="small")
    assert chosen.head is None and chosen.draft == "small"
    assert "code 2.91" in chosen.note and "--draft-head" in chosen.note
    # with no draft model to fall back on, the head is still better than nothing
    assert choose_drafting(base, draft="", draft_head="", no_head=False, fallback_draft="").head is not None
    from services.cli.models import _shipped_head_line

    assert "up drafts with the draft model" in _shipped_head_line("tiny-base", base)


def test_a_trained_head_copied_into_shipped_is_all_it_takes(bases, tmp_path, monkeypatch) -> None:
    """What training writes (collected as infra/gpu/train_head.sh does) replaces the shipped folder; the gate
    then reads the code acceptance training recorded, both ways."""
    import json
    import shutil

    from common.speculation.heads.store import code_tokens_per_round
    from common.speculation.heads.train import TrainSettings, train_head

    base, _, root = bases
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question_id": i, "turns": [f"Write a Python function number {i}."]}) + "\n"
                               for i in range(6)))
    train_head(TrainSettings(base_dir=base, out_dir=tmp_path / "trained", device="cpu", prompts_file=prompts,
                             time_budget_min=0.02, held_out=2, max_new_tokens=8, generate_batch=2, intermediate_size=32,
                             draft_vocab=100, tokens_per_step=64, eval_depth=3), lambda _: None)
    shipped_root = tmp_path / "shipped"
    shutil.copytree(root / "tiny-base", shipped_root / "tiny-base")  # the head shipped before
    shutil.rmtree(shipped_root / "tiny-base")  # replaced as docs/draft-head.md says: the folder, not file by file
    (shipped_root / "tiny-base").mkdir()
    for pattern in ("config.json", "acceptance.json", "head-*-of-*.safetensors"):  # what MODE=collect copies
        for path in (tmp_path / "trained").glob(pattern):
            shutil.copy(path, shipped_root / "tiny-base" / path.name)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", shipped_root)
    recorded = code_tokens_per_round(shipped_root / "tiny-base")
    assert recorded is not None and recorded >= 1.0
    monkeypatch.setattr(shipped, "DEFAULT_MIN_TOKENS_PER_ROUND", recorded)
    chosen = choose_drafting(base, draft="", draft_head="", no_head=False, fallback_draft="small")
    assert chosen.head == (shipped_root / "tiny-base").resolve()
    monkeypatch.setattr(shipped, "DEFAULT_MIN_TOKENS_PER_ROUND", recorded + 0.01)
    assert choose_drafting(base, draft="", draft_head="", no_head=False, fallback_draft="small").draft == "small"
