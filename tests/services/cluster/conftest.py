"""Fixtures shared by the cluster tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def fake_ssh(tmp_path):
    """An `ssh` that runs the remote command here, as sshd would (stdin passed through)."""
    script = tmp_path / "fake-ssh"
    script.write_text('#!/bin/sh\nfor last; do :; done\nexec sh -c "$last"\n')
    script.chmod(0o755)
    return str(script)
