"""Time to first streamed token through the OpenAI HTTP API against the ring's own ZeroMQ client.

Both paths get the same prompt token ids and the options an API request can set (emulated links
are left off both); the HTTP one is ``flowring serve`` started for the run on loopback and driven
by the official ``openai`` package (``stream=True``, ``/v1/completions``). Time to first token:
from sending the request to the first streamed chunk (a GenerateChunk on the ring, a server-sent
event over HTTP). Each round runs every prompt on both paths, alternating which goes first, so
drift hits both alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common.wire.client import GenerateChunk, GenerateReply
from common.wire.errors import ProtocolError
from services.client import Client, ClusterUnavailable
from services.launcher import free_ports

API_START_TIMEOUT_S = 120.0  # loading the tokenizer and the web stack on a loaded board
API_MODEL_NAME = "flowring-bench"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_OPTIONS = ("max_new_tokens", "temperature", "seed", "mode")  # what an API request can set (mode: serve's)


class TtftError(RuntimeError):
    """The HTTP API could not be started or driven for the measurement."""


@dataclasses.dataclass(frozen=True)
class TtftResult:
    mode: str
    repeats: int
    ring_ms: tuple[float, ...]  # every successful measurement, in the order taken
    http_ms: tuple[float, ...]
    failures: tuple[str, ...] = ()

    @property
    def ring_median_ms(self) -> float:
        return statistics.median(self.ring_ms) if self.ring_ms else 0.0

    @property
    def http_median_ms(self) -> float:
        return statistics.median(self.http_ms) if self.http_ms else 0.0

    @property
    def ratio(self) -> float:
        """HTTP median over ring median (the target: at most 1.10)."""
        return self.http_median_ms / self.ring_median_ms if self.ring_median_ms else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "repeats": self.repeats, "ring_ms": list(self.ring_ms),
                "http_ms": list(self.http_ms), "ring_median_ms": self.ring_median_ms,
                "http_median_ms": self.http_median_ms, "ratio": self.ratio, "failures": list(self.failures)}


@contextlib.contextmanager
def api_server(run_dir: Path, mode: str) -> Iterator[str]:
    """``flowring serve`` on a free loopback port for the cluster in ``run_dir``; yields its base URL."""
    (port,) = free_ports("127.0.0.1", 1)
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "services.cli.main", "serve", "--run-dir", str(run_dir), "--host", "127.0.0.1",
           "--port", str(port), "--model-name", API_MODEL_NAME, *(["--mode", mode] if mode else [])]
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=PROJECT_ROOT)
        try:
            _wait_for_api(url, proc, output)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # uvicorn stuck closing: it holds nothing the run needs
                proc.kill()
                proc.wait()


def _wait_for_api(url: str, proc: subprocess.Popen, output: Any) -> None:
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output.seek(0)
            tail = output.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise TtftError(f"flowring serve exited while starting: {tail[0]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2.0) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet
            pass
        time.sleep(0.2)
    raise TtftError(f"flowring serve did not answer at {url} within {API_START_TIMEOUT_S:.0f} s")


def ring_ttft_ms(client: Client, prompt_ids: Sequence[int], options: dict[str, Any]) -> float:
    """Send one streamed request over ZeroMQ; milliseconds to its first chunk (the stream is read to its end)."""
    started = time.perf_counter()
    first: float | None = None
    same = {k: options[k] for k in SHARED_OPTIONS if k in options}
    for msg in client.stream("", prompt_ids=tuple(prompt_ids), **same):
        if isinstance(msg, GenerateChunk) and first is None:
            first = time.perf_counter()
        elif isinstance(msg, GenerateReply) and not msg.ok:
            raise TtftError(msg.error or msg.code or "no error given")
    if first is None:
        raise TtftError("the stream ended without a chunk")
    return (first - started) * 1000


def http_ttft_ms(api: Any, prompt_ids: Sequence[int], options: dict[str, Any]) -> float:
    """The same through the OpenAI API (``api``: an ``openai.OpenAI`` client); the stream is read to its end."""
    started = time.perf_counter()
    first: float | None = None
    stream = api.completions.create(model=API_MODEL_NAME, prompt=list(prompt_ids), stream=True,
                                    max_tokens=options["max_new_tokens"], temperature=options["temperature"],
                                    seed=options["seed"])
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    if first is None:
        raise TtftError("the stream ended without a chunk")
    return (first - started) * 1000


def measure(connect: Callable[[], Client], url: str, prompts: Sequence[Sequence[int]], options: dict[str, Any],
            repeats: int, timeout_s: float) -> TtftResult:
    """``repeats`` rounds over the prompts on both paths, after one uncounted request on each."""
    try:
        import openai
    except ImportError as exc:
        raise TtftError("--ttft drives the API with the openai package: pip install openai") from exc
    api = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=timeout_s)
    ring: list[float] = []
    http: list[float] = []
    failures: list[str] = []
    paths: dict[str, tuple[Callable[[Sequence[int]], float], list[float]]]
    with connect() as client:
        paths = {"ring": (lambda ids: ring_ttft_ms(client, ids, options), ring),
                 "http": (lambda ids: http_ttft_ms(api, ids, options), http)}
        for rep in range(-1, repeats):  # -1: the uncounted warm-up round of the first prompt
            for ids in prompts[:1] if rep < 0 else prompts:
                for name in (("ring", "http") if rep % 2 == 0 else ("http", "ring")):
                    take, into = paths[name]
                    try:
                        ms = take(ids)
                    except (TtftError, ClusterUnavailable, ProtocolError, openai.OpenAIError) as exc:
                        failures.append(f"{name}: {exc}")
                        continue
                    if rep >= 0:
                        into.append(ms)
    return TtftResult(options.get("mode", ""), repeats, tuple(ring), tuple(http), tuple(failures))
