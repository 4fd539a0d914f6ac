"""The ``local`` baseline: transformers' own ``generate`` of the whole base model in one process.

What a user with one board big enough for the model would run. ``flowring bench`` starts this as a
worker on one stage's cores (``taskset``) and sends it one JSON line per generation on stdin:
``{"prompt", "raw", "max_new_tokens", "temperature", "seed"}``; it answers one JSON line on stdout
with the token ids and timings. Prefill ends when ``generate`` hands the streamer its first new
token; decode time is the rest, as the ring's stats define it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common.models.dtypes import MODEL_DTYPES, torch_dtype


class _FirstToken:
    """A ``generate`` streamer that notes when the first new token arrives (the prompt comes first)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


class LocalBaseline:
    """The base model loaded by transformers, greedy or sampled ``generate`` with its own KV cache."""

    def __init__(self, base: Path, dtype: str, device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM

        from common.models.modeling import load_model_spec, load_tokenizer

        self._tokenizer = load_tokenizer(base)
        self._model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype)).to(device).eval()
        self._eos = list(load_model_spec(base).eos_token_ids)
        self._device = device

    @torch.no_grad()
    def generate(self, prompt: str, raw: bool, max_new_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
        from common.models.modeling import encode_prompt

        ids = encode_prompt(self._tokenizer, prompt, raw=raw)
        inputs = torch.tensor([ids], device=self._device)
        streamer = _FirstToken()
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {
            "do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        torch.manual_seed(seed)
        started = time.perf_counter()
        out = self._model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                   eos_token_id=self._eos, pad_token_id=self._eos[0], streamer=streamer,
                                   **sampling)
        finished = time.perf_counter()
        tokens = out[0, len(ids):].tolist()
        for i, token in enumerate(tokens):  # stop exactly at the first end-of-sequence token, as the ring does
            if token in self._eos:
                tokens = tokens[: i + 1]
                break
        prefilled = streamer.first_at or finished
        return {"token_ids": tokens, "prompt_tokens": len(ids), "prefill_ms": (prefilled - started) * 1e3,
                "decode_ms": (finished - prefilled) * 1e3, "wall_ms": (finished - started) * 1e3}


class BaselineError(RuntimeError):
    """The local baseline worker could not start or stopped answering."""


class BaselineWorker:
    """The worker process as the benchmark drives it: one JSON line out, one back."""

    def __init__(self, base: Path, dtype: str, threads: int, cpus: str = "", device: str = "cpu") -> None:
        cmd = [sys.executable, "-m", "services.bench.local_baseline", "--base", str(base), "--dtype", dtype,
               "--threads", str(threads), "--device", device]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      cwd=Path(__file__).resolve().parents[2])
        if self._read().get("ready") is not True:
            raise BaselineError("the local baseline worker did not start")

    def generate(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)

    def __enter__(self) -> BaselineWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise BaselineError(f"the local baseline worker exited (code {self._proc.poll()})")
        return json.loads(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=MODEL_DTYPES)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = LocalBaseline(args.base, args.dtype, args.device)
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            answer = baseline.generate(job["prompt"], bool(job.get("raw", False)), int(job["max_new_tokens"]),
                                       float(job.get("temperature", 0.0)), int(job.get("seed", 0)))
        except (ValueError, RuntimeError, KeyError) as exc:  # one bad job is reported, the worker stays up
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
