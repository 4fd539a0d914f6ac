"""The model-store tests: each gets a private cache root; a fake catalog model whose conversion is stubbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_catalog import fake_model, home  # noqa: F401  (fixtures for the tests here)


@pytest.fixture(autouse=True)
def private_home(request: pytest.FixtureRequest) -> Path:
    """Every test gets its own cache root, never the user's."""
    return request.getfixturevalue("home")
