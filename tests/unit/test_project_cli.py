"""``flowring project``: the table of predictions beside measured figures, and errors as one red line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from services.cli import project
from tests.support.bench_runs import make_run

WIDE = {"COLUMNS": "200"}


def write_run(tmp_path, name: str, run: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(run))
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(project.app, list(args), env=WIDE)


def rows(output: str) -> dict[tuple[str, str], list[str]]:
    """(mode, stages) -> the rest of its table row."""
    out = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[1].isdigit():
            out[(cells[0], cells[1])] = cells[2:]
    return out


def test_predicts_each_mode_and_sets_the_measured_figure_beside_it(tmp_path) -> None:
    source = write_run(tmp_path, "n2.json", make_run())
    result = invoke("--from", source, "--stages", "2,4")
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert set(table) == {(m, n) for m in ("local", "ar", "chunk", "flowspec") for n in ("2", "4")}
    assert table[("ar", "2")] == ["10.00", "10.00", "+0.0%"]  # the run's own N: measured beside it
    assert table[("ar", "4")][1:] == ["-", "-"]  # nothing measured at 4
    assert table[("local", "4")][0] == "4.00"  # local stays as measured


def test_measured_runs_of_other_n_are_compared(tmp_path) -> None:
    other = make_run()
    other["cluster"]["stages"] = [{"name": f"stage-{i}", "layers": [2 * i - 2, 2 * i]} for i in range(1, 5)]
    other["summary"] = [{"mode": "ar", "decode_tokens_per_s": 5.0}]
    result = invoke("--from", write_run(tmp_path, "n2.json", make_run()), "--stages", "4",
                    "--measured", write_run(tmp_path, "n4.json", other))
    assert result.exit_code == 0, result.output
    predicted, measured, error = rows(result.output)[("ar", "4")]
    assert measured == "5.00"
    assert error == f"{(float(predicted) - 5.0) / 5.0:+.1%}"


def test_speed_scales_the_predictions(tmp_path) -> None:
    source = write_run(tmp_path, "n2.json", make_run())
    result = invoke("--from", source, "--stages", "2", "--speed", "2")
    assert result.exit_code == 0, result.output
    assert rows(result.output)[("ar", "2")] == ["20.00", "-", "-"]  # other boards: nothing measured on them


def test_errors_are_one_line(tmp_path) -> None:
    source = write_run(tmp_path, "n2.json", make_run())
    for args, message in (
        (("--stages", "2,x"), "--stages takes stage counts"),
        (("--stages", "9"), "cannot split 8 layers"),
        (("--link-mbps", "100"), "--hidden-size"),
    ):
        result = invoke("--from", source, *args)
        assert result.exit_code == 1
        assert message in result.output
    assert "cannot read the run" in invoke("--from", str(tmp_path / "missing.json")).output


def test_acceptance_from_another_run_replaces_the_requests(tmp_path) -> None:
    source = write_run(tmp_path, "n2.json", make_run())
    slower = make_run(ar_step_ms=200.0)
    for record in slower["records"]:
        if record["mode"] == "ar":
            record["stats"]["steps"] *= 2  # twice the steps for the same tokens: half the rate
    result = invoke("--from", source, "--stages", "2", "--acceptance-from", write_run(tmp_path, "other.json", slower))
    assert result.exit_code == 0, result.output
    assert "acceptance from other.json" in result.output
    assert rows(result.output)[("ar", "2")][0] == "5.00"  # 40 steps at the source's 100 ms
