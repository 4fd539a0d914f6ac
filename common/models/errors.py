"""Errors and the progress sink of the local model store."""

from __future__ import annotations

from typing import Protocol

from common.models.catalog import ModelStoreError


class HashMismatchError(ModelStoreError):
    """The joined GGUF's size or sha256 differs from the catalog's pin."""


class PackageInstallError(ModelStoreError):
    """pip failed, or an installed package lacks the file or module that is needed."""


class DiskSpaceError(ModelStoreError):
    """Not enough free disk space for a pull or a conversion."""


class ModelNotPulledError(ModelStoreError):
    """A catalog model that is not (completely) in the cache."""


class ConversionError(ModelStoreError):
    """A GGUF file converted into something other than a plain dense model."""


class ProgressSink(Protocol):
    """Receives progress of one step at a time: start, any number of advances, finish."""

    def start(self, total: int | None, label: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class _NoProgress:
    def start(self, total: int | None, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass
