"""Fixtures for the `flowring models` tests: a private cache root and a fake catalog model."""

from tests.support.fake_catalog import fake_model, home  # noqa: F401  (fixtures for the tests here)
