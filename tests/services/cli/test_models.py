"""`flowring models` commands through typer's test runner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.cli.models import app
from tests.support.fake_catalog import FakeModel

runner = CliRunner()


def test_list_empty(home: Path) -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "no models cached" in result.output


def test_pull_then_list_then_path(fake_model: FakeModel, home: Path) -> None:
    pulled = runner.invoke(app, ["pull", "fake"])
    assert pulled.exit_code == 0, pulled.output
    assert "fake-model: pulled to" in pulled.stdout

    again = runner.invoke(app, ["pull", "fake"])
    assert again.exit_code == 0
    assert "already pulled" in again.stdout

    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "DTYPE", "PATH"]
    assert row.split()[0] == "fake-model"
    assert row.endswith(str(home / "models" / "fake-model"))

    path = runner.invoke(app, ["path", "fake-model"])
    assert path.exit_code == 0
    assert path.stdout.strip() == str(home / "models" / "fake-model")


def test_errors_are_one_line_and_exit_1(home: Path) -> None:
    result = runner.invoke(app, ["path", "smollm2-135m"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == "error: model smollm2-135m is not pulled; run: flowring models pull smollm2-135m"
    )

    unknown = runner.invoke(app, ["pull", "no-such-model"])
    assert unknown.exit_code == 1
    assert "unknown model 'no-such-model'" in unknown.stderr
    assert "Traceback" not in unknown.output
