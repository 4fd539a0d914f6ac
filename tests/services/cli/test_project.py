"""``flowring project``: the table of predictions beside measured figures, the validation, one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from common.observability.trace import SPAN_KINDS
from common.projection.ahead import DRAINING_LOOP
from common.projection.fit import fit_run, with_drafter_loop
from services.cli import project
from tests.support.bench_runs import ar_step_ms, make_run

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
    ar = f"{1e3 / ar_step_ms(2):.2f}"
    assert table[("ar", "2")] == [ar, ar, "+0.0%"]  # the run's own N, by hand: measured beside it
    assert table[("ar", "4")][1:] == ["-", "-"]  # nothing measured at 4
    assert table[("local", "4")][0] == "4.00"  # local stays as measured


def test_measured_runs_of_other_n_are_compared(tmp_path) -> None:
    result = invoke("--from", write_run(tmp_path, "n2.json", make_run()), "--stages", "4",
                    "--measured", write_run(tmp_path, "n4.json", make_run(stages=4)))
    assert result.exit_code == 0, result.output
    predicted, measured, error = rows(result.output)[("ar", "4")]
    assert predicted == measured == f"{1e3 / ar_step_ms(4):.2f}"
    assert error == "+0.0%"


def test_speed_scales_the_predictions(tmp_path) -> None:
    result = invoke("--from", write_run(tmp_path, "n2.json", make_run()), "--stages", "2", "--speed", "2")
    assert result.exit_code == 0, result.output
    assert rows(result.output)[("ar", "2")] == [f"{2e3 / ar_step_ms(2):.2f}", "-", "-"]  # other boards


def test_validate_predicts_every_comparable_run_from_every_other(tmp_path) -> None:
    n2, n4 = write_run(tmp_path, "n2.json", make_run()), write_run(tmp_path, "n4.json", make_run(stages=4))
    other_model = make_run()
    other_model["cluster"]["base"] = "another-base"
    result = invoke("--validate", n2, n4, write_run(tmp_path, "other.json", other_model))
    assert result.exit_code == 0, result.output
    pairs = [cells for cells in (line.split() for line in result.output.splitlines()) if cells[4:5] == ["ar"]]
    assert [(p[0], p[2]) for p in pairs] == [("n2.json", "n2.json"), ("n2.json", "n4.json"), ("n4.json", "n2.json"),
                                             ("n4.json", "n4.json"), ("other.json", "other.json")]
    ar_to_n4 = next(cells for cells in (line.split() for line in result.output.splitlines())
                    if cells[:5] == ["n2.json", "(N=2)", "n4.json", "(N=4)", "ar"])
    assert ar_to_n4[-4:] == [f"{1e3 / ar_step_ms(4):.2f}", "+0.0%", f"{1e3 / ar_step_ms(4):.2f}", "+0.0%"]
    held = [cells for cells in (line.split() for line in result.output.splitlines()) if cells[2:3] == ["flowspec"]]
    assert [cells[3:6] for cells in held] == [["6.0", "0.0", "2.0"]] * 3  # steps, noops, rounds of each run


def test_errors_are_one_line(tmp_path) -> None:
    source = write_run(tmp_path, "n2.json", make_run())
    for args, message in (
        (("--from", source, "--stages", "2,x"), "--stages takes stage counts"),
        (("--from", source, "--stages", "9"), "cannot split 8 layers"),
        (("--from", source, "--link-mbps", "100"), "--hidden-size"),
        (("--from", str(tmp_path / "missing.json")), "cannot read the run"),
        ((), "give --from"),
        (("--validate",), "--validate needs the runs"),
    ):
        result = invoke(*args)
        assert result.exit_code == 1
        assert message in result.output


def test_acceptance_from_another_run_replaces_the_requests(tmp_path) -> None:
    source = write_run(tmp_path, "n2.json", make_run())
    longer = make_run()
    longer["records"][1]["stats"]["new_tokens"] = 11  # the ar request: half the tokens in the same steps
    result = invoke("--from", source, "--stages", "2", "--acceptance-from", write_run(tmp_path, "other.json", longer))
    assert result.exit_code == 0, result.output
    assert "acceptance from other.json" in result.output
    assert rows(result.output)[("ar", "2")][0] == f"{0.5e3 / ar_step_ms(2):.2f}"


def _ahead_run() -> dict:
    run = make_run()
    trace = next(r for r in run["records"] if r["mode"] == "flowspec")["stats"]["trace"]
    start = trace["drafter"][1]  # the first drafter span is a draft: a decision in its middle
    trace["scheduler"] += [SPAN_KINDS.index("schedule"), start + 1, 0]
    return run


def test_the_drafter_loop_is_the_runs_unless_one_is_given(tmp_path) -> None:
    old, new = _ahead_run(), {**_ahead_run(), "drafter_loop": DRAINING_LOOP}
    drains = [r.ahead.drains for r in fit_run(old).requests if r.ahead is not None]
    assert drains == [False]  # recorded before the loop drained its sockets
    assert [r.ahead.drains for r in fit_run(new).requests if r.ahead is not None] == [True]
    assert [r.ahead.drains for r in with_drafter_loop(fit_run(old), "drain").requests if r.ahead] == [True]
    assert [r.ahead.drains for r in with_drafter_loop(fit_run(new), "one").requests if r.ahead] == [False]
    result = invoke("--from", write_run(tmp_path, "ahead.json", old), "--stages", "2", "--drafter-loop", "drain")
    assert result.exit_code == 0 and "drafter loop: drain" in result.output, result.output
    result = invoke("--from", write_run(tmp_path, "ahead.json", old), "--drafter-loop", "sometimes")
    assert result.exit_code != 0 and "--drafter-loop must be one of" in result.output


def test_a_run_whose_drafter_drafted_ahead_is_projected(tmp_path) -> None:
    run = _ahead_run()
    result = invoke("--from", write_run(tmp_path, "ahead.json", run), "--stages", "2")
    assert result.exit_code == 0, result.output
    assert "not projected" not in result.output
    assert ("flowspec", "2") in rows(result.output)
