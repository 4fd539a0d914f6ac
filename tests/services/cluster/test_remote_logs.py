"""Board logs read and followed over SSH, with an `ssh` that runs the remote command here."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.cluster.inventory import Board, SshOptions
from common.observability.logview import LogLine
from services.cli.main import app
from services.cluster import remote_logs
from services.cluster import ssh as ssh_module
from services.cluster.remote_logs import LogCopy, ServiceLog, Tails, fetch, merged, recorded_logs
from services.cluster.ssh import Ssh

runner = CliRunner()


def _line(ts: str, service: str, event: str, **fields) -> str:
    return json.dumps({"ts": f"2026-12-01T00:00:{ts}Z", "level": "info", "service": service, "event": event,
                       **fields}) + "\n"


def _board(tmp_path: Path, name: str) -> Board:
    return Board(name=name, address=f"10.0.0.{len(name)}", user="flow", cores=1, memory_mib=512,
                 python="/usr/bin/python3", workdir=str(tmp_path), home=str(tmp_path / name))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A boards.json as `up --cluster` writes it: the scheduler on b1, stage-1 on b2, each logging in its home."""
    b1, b2 = _board(tmp_path, "b1"), _board(tmp_path, "b2")
    for board, service, text in (
        (b1, "scheduler", _line("01.000", "scheduler", "service_ready")
         + _line("03.000", "scheduler", "request_done", request_id="r1")),
        (b2, "stage-1", _line("02.000", "stage-1", "segment", request_id="r1")
         + "Traceback (most recent call last):\n" + _line("04.000", "stage-1", "partial")[:-20]),
    ):
        log = Path(board.home) / "run" / "logs" / f"{service}.log"
        log.parent.mkdir(parents=True)
        log.write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    record = {"ssh": dataclasses.asdict(SshOptions()), "boards": [dataclasses.asdict(b1), dataclasses.asdict(b2)],
              "services": [{"name": "scheduler", "board": "b1", "pid": 1, "log": f"{b1.home}/run/logs/scheduler.log"},
                           {"name": "stage-1", "board": "b2", "pid": 2, "log": f"{b2.home}/run/logs/stage-1.log"}]}
    (run / "boards.json").write_text(json.dumps(record))
    return run


@pytest.fixture
def ssh_here(fake_ssh, monkeypatch) -> Ssh:
    """The CLI's Ssh runs remote commands here too."""
    monkeypatch.setattr(ssh_module, "Ssh", lambda options: Ssh(options, ssh=fake_ssh))
    return Ssh(SshOptions(), ssh=fake_ssh)


def _tails_running(path: str) -> list[int]:
    """Pids of `tail` processes on ``path`` (a stray remote tail would show here)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"tail") and path.encode() in argv:
            found.append(int(proc.name))
    return found


def test_recorded_logs_name_each_service_board_and_file(run_dir: Path) -> None:
    options, logs = recorded_logs(run_dir)
    assert options == SshOptions()
    assert [(log.service, log.board.name, Path(log.path).name) for log in logs] == [
        ("scheduler", "b1", "scheduler.log"), ("stage-1", "b2", "stage-1.log")]


def test_fetch_keeps_complete_lines_and_merges_by_time(run_dir: Path, ssh_here: Ssh) -> None:
    _, logs = recorded_logs(run_dir)
    copies = fetch(ssh_here, logs)
    assert [c.problem for c in copies] == ["", ""] and [c.line_count for c in copies] == [2, 2]
    got = [(line.service, line.fields.get("event", line.raw)) for line in merged(copies)]
    assert got == [("scheduler", "service_ready"), ("stage-1", "segment"),
                   ("stage-1", "Traceback (most recent call last):"), ("scheduler", "request_done")]


def test_an_unreadable_log_is_one_problem_line(run_dir: Path, ssh_here: Ssh) -> None:
    _, logs = recorded_logs(run_dir)
    gone = dataclasses.replace(logs[0], path="/nonexistent/scheduler.log")
    copy = fetch(ssh_here, [gone])[0]
    assert copy.text == "" and copy.problem.startswith("board b1: scheduler's log /nonexistent/scheduler.log: "
                                                       "cannot read it: ")
    assert list(merged([copy])) == []


def test_tails_start_after_the_fetched_lines_and_leave_no_tail_behind(run_dir: Path, ssh_here: Ssh) -> None:
    _, logs = recorded_logs(run_dir)
    stage_log = logs[1].path
    with Tails(ssh_here, fetch(ssh_here, logs)) as tails:
        _append(stage_log, _line("04.000", "stage-1", "partial")[-20:])  # the line being written when fetched
        first = _poll_until(tails, 1)
        _append(stage_log, "still untimed\n" + _line("05.000", "stage-1", "late", request_id="r2"))
        then = _poll_until(tails, 2)
        assert _tails_running(stage_log)
    assert [line.fields["event"] for line in first] == ["partial"]
    assert [line.raw for line in then] == ["still untimed", _line("05.000", "stage-1", "late", request_id="r2")[:-1]]
    assert then[0].ts == first[0].ts  # an untimed line takes the time of its service's line before it
    assert _tails_running(stage_log) == []


def _append(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _poll_until(tails: Tails, count: int) -> list[LogLine]:
    seen: list[LogLine] = []
    deadline = time.monotonic() + 20
    while len(seen) < count and time.monotonic() < deadline:
        lines, ended = tails.poll(0.2)
        assert ended == []
        seen += lines
    return seen


def test_a_tail_that_ends_is_reported_once(run_dir: Path, ssh_here: Ssh) -> None:
    _, logs = recorded_logs(run_dir)
    board = dataclasses.replace(logs[0].board, workdir="/nonexistent")
    broken = ServiceLog("scheduler", board, logs[0].path)
    bad_ssh = Ssh(SshOptions(), ssh="/bin/false")  # connects nowhere, like an unreachable board
    with Tails(bad_ssh, [LogCopy(broken, "")]) as tails:
        problems: list[str] = []
        deadline = time.monotonic() + 10
        while tails.following and time.monotonic() < deadline:
            problems += tails.poll(0.2)[1]
    assert problems == [f"board b1: scheduler's log {logs[0].path}: no longer followed: ssh exited with status 1"]


def test_cli_reads_every_board_with_the_filters(run_dir: Path, ssh_here: Ssh) -> None:
    result = runner.invoke(app, ["logs", "--request", "r1", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert [json.loads(ln)["service"] for ln in result.output.splitlines()] == ["stage-1", "scheduler"]
    result = runner.invoke(app, ["logs", "--service", "stage-1", "--pretty", "--run-dir", str(run_dir)])
    assert result.exit_code == 0 and result.output.splitlines()[0].split()[:4] == [
        "00:00:02.000", "info", "stage-1", "r1"], result.output


def test_cli_says_which_log_it_could_not_read(run_dir: Path, ssh_here: Ssh) -> None:
    Path(recorded_logs(run_dir)[1][0].path).unlink()
    result = runner.invoke(app, ["logs", "--run-dir", str(run_dir)])
    assert result.exit_code == 1
    assert "error: board b1: scheduler's log" in result.output and '"segment"' in result.output


def test_cli_follow_prints_new_lines_from_the_boards_and_stops_on_ctrl_c(run_dir: Path, ssh_here: Ssh,
                                                                          monkeypatch) -> None:
    stage_log = recorded_logs(run_dir)[1][1].path
    poll = Tails.poll
    printed: list[str] = []
    written: list[bool] = []
    deadline = time.monotonic() + 20

    def poll_then_interrupt(self: Tails, wait_s: float):
        if any("late_event" in raw for raw in printed) or time.monotonic() > deadline:
            raise KeyboardInterrupt  # as Ctrl-C would, with the late line still held for reordering
        if not written:
            written.append(True)
            with open(stage_log, "a") as f:
                f.write(_line("04.000", "stage-1", "partial")[-20:] + _line("06.000", "stage-1", "late_event"))
        lines, ended = poll(self, 1.0)
        printed.extend(line.raw for line in lines)
        return lines, ended

    monkeypatch.setattr(remote_logs.Tails, "poll", poll_then_interrupt)
    result = runner.invoke(app, ["logs", "-f", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    events = [json.loads(ln)["event"] if ln.startswith("{") else ln for ln in result.output.splitlines()]
    assert events == ["service_ready", "segment", "Traceback (most recent call last):", "request_done", "partial",
                      "late_event"], result.output
    assert _tails_running(stage_log) == []
