"""OpenSSH argument lists: remote arguments arrive exactly as given; the constant scripts work."""

from __future__ import annotations

import os
import shlex
import subprocess
import time

from common.cluster.inventory import Board, SshOptions
from services.cluster import board_agent
from services.cluster.ssh import SSH_FAILED, Ssh, detached, in_checkout

NASTY = ["plain", "two words", "$(touch /tmp/pwned)", "it's", "; rm -rf /", "*", "a\nb"]


def board(tmp_path, **changes) -> Board:
    fields = dict(name="b1", address="10.0.0.11", user="flow", cores=2, memory_mib=1024, python="/usr/bin/python3",
                  workdir=str(tmp_path), home=str(tmp_path / "home"), ssh_port=2200)
    return Board(**{**fields, **changes})


def _as_login_shell(argv: list[str]) -> subprocess.CompletedProcess:
    """What sshd does with the remote command: hand the one string to the user's shell."""
    return subprocess.run(["sh", "-c", argv[-1]], capture_output=True, text=True, check=False, timeout=30)


def test_command_is_batch_mode_with_a_timeout_and_one_quoted_remote_string(tmp_path):
    ssh = Ssh(SshOptions(identity="/k/id", known_hosts="/k/known", connect_timeout_s=4))
    argv = ssh.command(board(tmp_path), ["echo", *NASTY])
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and "ConnectTimeout=4" in argv
    assert "IdentityFile=/k/id" in argv and "UserKnownHostsFile=/k/known" in argv
    assert argv[argv.index("-p") + 1] == "2200" and argv[argv.index("-l") + 1] == "flow"
    assert argv[-3:-1] == ["10.0.0.11", "--"]
    assert shlex.split(argv[-1]) == ["echo", *NASTY]


def test_remote_arguments_reach_the_program_unchanged(tmp_path):
    argv = Ssh(SshOptions()).command(board(tmp_path), ["printf", "%s|", *NASTY])
    assert _as_login_shell(argv).stdout == "|".join(NASTY) + "|"
    assert not os.path.exists("/tmp/pwned")


def test_in_checkout_runs_in_the_workdir_with_its_home(tmp_path):
    b = board(tmp_path)
    argv = Ssh(SshOptions()).command(b, in_checkout(b, ["sh", "-c", 'pwd; echo "$FLOWRING_HOME $PYTHONPATH"']))
    assert _as_login_shell(argv).stdout.split() == [str(tmp_path), str(tmp_path / "home"), str(tmp_path)]
    gone = board(tmp_path, workdir=str(tmp_path / "absent"))
    assert _as_login_shell(Ssh(SshOptions()).command(gone, in_checkout(gone, ["true"]))).returncode == 97


def test_detached_service_outlives_its_shell_logs_to_its_file_and_stops(tmp_path):
    b = board(tmp_path)
    log = tmp_path / "home" / "run" / "logs" / "svc.log"
    started = _as_login_shell(Ssh(SshOptions()).command(b, detached(b, str(log), ["sh", "-c", "echo hello; exec sleep 60"])))
    pid = int(started.stdout.split()[-1])
    try:
        assert board_agent.alive([pid]) == [pid]
        deadline = time.monotonic() + 10
        while not (log.exists() and "hello" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text() == "hello\n"
        assert os.getpgid(pid) == pid  # its own session and group: `stop` reaches its children
    finally:
        left = board_agent.stop([pid], grace_s=0.1)
    assert left == [] and board_agent.alive([pid]) == []


def test_run_returns_status_output_and_the_reason_line(tmp_path, fake_ssh):
    ssh = Ssh(SshOptions(), ssh=fake_ssh)
    ok = ssh.run(board(tmp_path), ["echo", "two words"], timeout_s=10)
    assert (ok.returncode, ok.stdout) == (0, "two words\n")
    bad = ssh.run(board(tmp_path), ["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3"], timeout_s=10)
    assert (bad.returncode, bad.reason) == (3, "the reason")
    hung = ssh.run(board(tmp_path), ["sleep", "30"], timeout_s=0.5)
    assert hung.returncode == SSH_FAILED and "no answer within" in hung.reason
