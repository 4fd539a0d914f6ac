"""CPU smoke test of the whole training path on a tiny random base, then drafting with the head."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from common.speculation.drafting import TreeShape
from common.speculation.heads import FeaturePairs, HeadTreeDrafter, dataset, load_head, magpie
from common.speculation.heads import train as train_module
from common.speculation.heads.distill import Sample
from common.speculation.heads.model import new_head
from common.speculation.heads.packing import INT8_ROWS
from common.speculation.heads.train import TrainingError, TrainSettings, train_head
from services.cli.heads import app

PROMPTS = [f"Write a Python function number {i} that adds {i} to its argument." for i in range(6)]


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "turns": [t]}) + "\n" for i, t in enumerate(PROMPTS)))
    return path


def _settings(base: Path, out: Path, prompts: Path, **kw) -> TrainSettings:
    return TrainSettings(
        base_dir=base, out_dir=out, device="cpu", prompts_file=prompts, time_budget_min=0.05, held_out=2,
        max_new_tokens=10, generate_batch=2, intermediate_size=32, draft_vocab=100, tokens_per_step=64,
        eval_depth=3, **kw,
    )


def test_a_head_trains_on_cpu_and_drafts(tiny_base: Path, prompts_file: Path, tmp_path: Path) -> None:
    summary = train_head(_settings(tiny_base, tmp_path / "head", prompts_file), lambda _: None)
    assert summary.steps >= 1 and summary.samples >= 2
    code = summary.acceptance["code"]  # the prompts all ask for code
    assert 0 <= code.mean_accepted <= 3 and code.starts > 0 and set(summary.before_packing) == {"code"}
    assert not (tmp_path / "head" / "work").exists()
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["draft_vocab_size"] == 100 and config["training"]["steps"] == summary.steps
    assert config["weights"] == "int8-rows" and config["acceptance"]["code"]["starts"] == code.starts
    assert json.loads((tmp_path / "head" / "acceptance.json").read_text())["weights"] == "int8-rows"
    assert len(json.loads((tmp_path / "head" / "training-prompts.json").read_text())["texts"]) == len(PROMPTS)
    head = load_head(tmp_path / "head", tiny_base, dtype=torch.float32)
    drafter = HeadTreeDrafter(head)
    drafter.extend_context(FeaturePairs(torch.randn(4, head.spec.hidden_size), (5, 6, 7, 8)))
    tree = drafter.draft(8, TreeShape(nodes=6, depth=3, top_k=2))
    assert len(tree) == 7 and set(tree.tokens[1:]) <= set(head.draft_ids.tolist())


def test_a_head_trains_on_code_and_magpie_prose(tiny_base: Path, tmp_path: Path, monkeypatch) -> None:
    """The default sources: the offline code corpus and requests the tiny base writes itself."""
    monkeypatch.setattr(dataset, "code_instructions", lambda limit, seed: [
        f"Write a Python function `f{i}(x)`. It should do this: return x plus {i}." for i in range(limit)])
    monkeypatch.setattr(magpie, "MIN_CHARS", 1)  # a random base's requests are short bytes
    settings = TrainSettings(
        base_dir=tiny_base, out_dir=tmp_path / "head", device="cpu", time_budget_min=0.05, max_prompts=6,
        max_prose=32, prose_max_new_tokens=48, held_out=2, max_new_tokens=8, generate_batch=32,
        intermediate_size=32, draft_vocab=0, tokens_per_step=64, eval_depth=2, command="flowring heads train ...",
    )
    lines: list[str] = []
    summary = train_head(settings, lines.append)
    assert set(summary.acceptance) == {"code", "prose"}
    assert all(a.starts > 0 for a in summary.acceptance.values())
    assert any(line.startswith("magpie:") and "kept" in line for line in lines)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert "Magpie" in config["data_recipe"]["prose"] and config["training"]["command"] == "flowring heads train ..."
    assert config["data_recipe"]["held_apart_per_domain"] == {"code": 2, "prose": 2}


def test_a_paused_run_resumes_from_its_checkpoint(tiny_base: Path, prompts_file: Path, tmp_path: Path) -> None:
    paused = train_head(_settings(tiny_base, tmp_path / "head", prompts_file, stop_after_min=0.0), lambda _: None)
    assert paused.acceptance is None and paused.steps == 1
    work = tmp_path / "head" / "work"
    assert json.loads((work / "progress.json").read_text())["step"] == 1 and (work / "checkpoint.pt").is_file()
    with pytest.raises(TrainingError, match="--resume"):
        train_head(_settings(tiny_base, tmp_path / "head", prompts_file), lambda _: None)
    summary = train_head(_settings(tiny_base, tmp_path / "head", prompts_file, resume=True), lambda _: None)
    assert summary.steps > 1 and summary.acceptance is not None


def test_cli_trains_then_lists_the_head(tiny_base: Path, prompts_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "heads" / "tiny"
    result = runner.invoke(app, [
        "train", "--base", str(tiny_base), "--out", str(out), "--device", "cpu", "--prompts", str(prompts_file),
        "--time-budget-min", "0.05", "--held-out", "2", "--max-new-tokens", "8", "--generate-batch", "2",
        "--intermediate-size", "32", "--draft-vocab", "0", "--tokens-per-step", "64", "--eval-depth", "2",
    ])
    assert result.exit_code == 0, result.output
    assert "tokens per round" in result.output
    listed = runner.invoke(app, ["list", "--root", str(tmp_path / "heads")])
    assert listed.exit_code == 0 and "tiny" in listed.output and "vocab 320" in listed.output
    empty = runner.invoke(app, ["list", "--root", str(tmp_path / "none")])
    assert "no heads" in empty.output


def test_cli_refuses_an_unknown_base(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--base", str(tmp_path / "missing"), "--device", "cpu"])
    assert result.exit_code == 1 and "error:" in result.output


def test_the_loss_trains_every_head_weight_and_no_frozen_one(tiny_base) -> None:
    head = new_head(tiny_base, intermediate_size=48, draft_ids=torch.arange(50, 250), dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    batch = [Sample(torch.randint(3, 259, (n,), generator=gen), torch.randn(n, head.spec.hidden_size, generator=gen), 3, False)
             for n in (9, 6)]
    loss = train_module._loss(head, batch, train_module._row_map(head), noise=0.01)
    loss.backward()
    for name, p in head.named_parameters():
        if name.startswith(("fc.", "layer.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert head.embed_tokens.weight.grad is None and head.lm_head.weight.grad is None


def test_a_head_that_memorised_its_data_is_accepted_in_the_ring(tmp_path: Path) -> None:
    """Training's pairing of features and tokens is the ring's: a memorised continuation is drafted whole."""
    import time

    from common.speculation.heads import save_head
    from common.speculation.heads.distill import GenerationSettings, generate_shards, load_shards
    from common.speculation.heads.evaluate import estimate_acceptance
    from common.speculation.modes import DraftSettings
    from tests.support.local_ring import LocalRing
    from tests.support.tiny_models import make_tiny_model

    base = make_tiny_model(tmp_path / "base", family="qwen2", num_layers=2, hidden=64, seed=3)
    generate_shards(base, PROMPTS[:4], 0, tmp_path / "shards", GenerationSettings("cpu", 4, 24, torch.float32),
                    deadline=time.monotonic() + 3600)
    samples = load_shards(tmp_path / "shards", "cpu")
    head = train_module._head(TrainSettings(base_dir=base, out_dir=tmp_path, device="cpu", draft_vocab=0,
                                            intermediate_size=128), samples, tmp_path)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        loss = train_module._loss(head, samples, None, noise=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = estimate_acceptance(head.eval(), samples, depth=4, top_k=2)
    assert trained.top1_agreement > 0.9
    save_head(head, tmp_path / "head", weights=INT8_ROWS)  # the shipped format keeps what was learnt
    packed = estimate_acceptance(load_head(tmp_path / "head", base, dtype=torch.float32), samples, depth=4, top_k=2)
    assert packed.mean_accepted >= 0.95 * trained.mean_accepted
    trees = DraftSettings(top_k=2, fill_nodes=8, fill_depth=5, segment_cap=4, expand_nodes=4, expand_depth=3)
    ring = LocalRing(base, None, 2, settings=trees, draft_head=tmp_path / "head")
    for sample in samples:
        prompt, answer = sample.tokens[: sample.prompt_length].tolist(), sample.tokens[sample.prompt_length :]
        reply = ring.generate(prompt, max_new_tokens=len(answer), mode="chunk")
        assert list(reply.token_ids) == answer.tolist()
        assert reply.stats["tokens_per_step"] > 3  # an untrained head accepts about nothing


def test_answering_starts_a_batch_only_if_one_as_slow_as_the_slowest_ends_by_the_deadline(tmp_path, monkeypatch) -> None:
    from common.speculation.heads import distill

    clock = [0.0]
    durations = iter([1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0])

    def answer(model, prompts, settings, eos, pad, held_out, domains):
        clock[0] += next(durations)
        return [Sample(torch.tensor([1, 2, 3]), torch.zeros(3, 4), 2, h, d) for h, d in zip(held_out, domains, strict=True)]

    monkeypatch.setattr(distill.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(distill, "_answer", answer)
    monkeypatch.setattr(distill, "encode_prompt", lambda tokenizer, text, raw: [1, 2])
    generator = distill.Generator(model=None, tokenizer=None, eos=[0], pad=0)
    settings = distill.GenerationSettings("cpu", 2, 4, torch.float32)
    shards = distill.generate_shards(tmp_path, [f"p{i}" for i in range(14)], 2, tmp_path / "shards", settings,
                                     deadline=8.0, generator=generator)
    # held apart (1 s) and one training batch (3 s) always run; after 4 s a batch as slow as the slowest (3 s)
    # ends before 8 s, after 5 s it would not
    assert shards == 3 and clock[0] == 5.0
