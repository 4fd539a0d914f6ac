"""The offline code corpus, and the guard that keeps benchmark prompts out of training data."""

import json
from pathlib import Path

import pytest

from common.speculation.heads.corpus import (
    BenchmarkLeakError,
    check_excludes_benchmarks,
    code_instructions,
    humaneval_entry_points,
    prompts_from_file,
)

SOURCE = '''
def parse_range(text, sep="-"):
    """Return the integers of a range written like 3-7, both ends included."""


def _hidden(x):
    """Private helpers never become instructions, however well documented."""


class Ledger:
    """Keep a running balance of credits and debits, oldest entry first."""


def undocumented(x):
    return x


def has_close_elements(numbers, threshold):
    """Check if in given list of numbers, are any two numbers closer to each other than threshold."""
'''


def test_instructions_come_from_public_documented_functions_and_classes(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "ranges.py").write_text(SOURCE)
    (tmp_path / "lib" / "tests").mkdir()
    (tmp_path / "lib" / "tests" / "test_x.py").write_text('def skipped():\n    """Tests are never read for prompts."""\n')
    found = code_instructions(10, roots=[tmp_path])
    assert found[0] == ("Write a Python function `parse_range(text, sep='-')`. It should do this: "
                        "Return the integers of a range written like 3-7, both ends included.")
    assert found[1].startswith("Write a Python class `Ledger`.")
    if "has_close_elements" in humaneval_entry_points():  # a HumanEval entry point is filtered out
        assert len(found) == 2
    assert code_instructions(1, roots=[tmp_path]) == found[:1]


def test_a_benchmark_prompt_in_the_corpus_is_refused() -> None:
    bench = 'from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n    """ You\'re given..."""\n'
    check_excludes_benchmarks(["Write a Python function `sum_of(xs)`. It should do this: add."], [bench])
    with pytest.raises(BenchmarkLeakError, match="overlaps a benchmark"):
        check_excludes_benchmarks(["Write a Python function `below_zero(ops)`. It should do this: x."], [bench])
    with pytest.raises(BenchmarkLeakError):
        check_excludes_benchmarks([f"Complete this: {bench}"], [bench])


def test_benchmark_prompt_files_are_refused(tmp_path: Path) -> None:
    line = json.dumps({"question_id": 1, "turns": ["Write a sorting function."]}) + "\n"
    (tmp_path / "mt_bench.jsonl").write_text(line)
    with pytest.raises(BenchmarkLeakError, match="benchmark"):
        prompts_from_file(tmp_path / "mt_bench.jsonl")
    (tmp_path / "he.jsonl").write_text(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(BenchmarkLeakError, match="HumanEval"):
        prompts_from_file(tmp_path / "he.jsonl")
    (tmp_path / "mine.jsonl").write_text(line)
    assert prompts_from_file(tmp_path / "mine.jsonl") == ["Write a sorting function."]
