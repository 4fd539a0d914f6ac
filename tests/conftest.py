"""Test-wide settings, and local clusters' services forked from a zygote (services/testbed/zygote.py)."""

import os

import pytest
import torch

from services import launcher
from services.testbed.zygote import Zygotes

# Tiny models run fastest on one thread; two threads on two busy cores are ~20x slower per matmul.
torch.set_num_threads(1)
_EXEC_SPAWN = launcher._spawn


@pytest.fixture(autouse=True, scope="session")
def _services_forked():
    """Every service process a test's cluster starts is forked from a zygote that imported the runtime once
    (seconds of CPU saved per process); a test marked ``exec_services`` gets `flowring up`'s exec'd ones, and
    FLOWRING_EXEC_SERVICES=1 gives them to every test (to compare, or to rule the zygote out)."""
    if os.environ.get("FLOWRING_EXEC_SERVICES") == "1":
        yield
        return
    zygotes = Zygotes(launcher._project_root())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launcher, "_spawn", zygotes.spawn)
        yield
    zygotes.close()


@pytest.fixture(autouse=True)
def _services_execd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("exec_services") is not None:
        monkeypatch.setattr(launcher, "_spawn", _EXEC_SPAWN)
