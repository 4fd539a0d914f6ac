"""``flowring generate --seed``: no seed samples afresh per request, a seed repeats."""

from __future__ import annotations

from typer.testing import CliRunner

from common.wire.client import GenerateReply
from services.cli import main


class _Client:
    def __init__(self, seen: list[dict]) -> None:
        self.seen = seen

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def status(self, timeout_s: float) -> None:
        pass

    def generate(self, prompt: str, **options) -> GenerateReply:
        self.seen.append(options)
        return GenerateReply(ok=True, text="t", token_ids=(1,), stats={"new_tokens": 1, "wall_ms": 1.0,
                                                                      "tokens_per_s": 1.0, "decode_tokens_per_s": 0.0})


def test_generate_seeds(monkeypatch, tmp_path):
    seen: list[dict] = []
    monkeypatch.setattr(main, "_cluster", lambda run_dir: None)
    monkeypatch.setattr(main, "client_for", lambda spec, timeout: _Client(seen))
    runner = CliRunner()
    for args in (["--temperature", "1"], ["--temperature", "1"], ["--seed", "7"], ["--seed", "7"]):
        result = runner.invoke(main.app, ["generate", "hi", *args, "--run-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
    seeds = [options["seed"] for options in seen]
    assert seeds[0] != seeds[1], "two unseeded requests got the same seed"
    assert seeds[2:] == [7, 7]
