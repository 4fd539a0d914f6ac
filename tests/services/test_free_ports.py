"""free_ports never hands a port out twice in one process, even when the OS reports it free again."""

from __future__ import annotations

import socket

from services import launcher


class _FakeSocket:
    """A socket whose bind lands on the next port of a fixed script."""

    script: list[int] = []

    def __init__(self, *_args):
        self.port = 0

    def bind(self, _addr):
        self.port = _FakeSocket.script.pop(0)

    def getsockname(self):
        return ("127.0.0.1", self.port)

    def close(self):
        pass


def test_a_port_the_os_reports_again_is_skipped(monkeypatch):
    monkeypatch.setattr(launcher, "_HANDED_OUT", set())
    monkeypatch.setattr(launcher.socket, "socket", _FakeSocket)
    _FakeSocket.script = [41001, 41002, 41001, 41002, 41003, 41004]
    assert launcher.free_ports("127.0.0.1", 2) == [41001, 41002]
    assert launcher.free_ports("127.0.0.1", 2) == [41003, 41004]


def test_real_ports_are_distinct_across_calls():
    first = launcher.free_ports("127.0.0.1", 5)
    second = launcher.free_ports("127.0.0.1", 5)
    assert len(set(first) | set(second)) == 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", second[0]))
