"""The one dtype table: the names used on the wire, in settings and on the command line, and their sizes.

Dtypes travel by name, never by byte width (bfloat16 and float16 share one). ``MODEL_DTYPES`` are the dtypes
weights and KV caches run in; the table also holds what messages carry besides (token ids). Importing this
module does not import torch, so the CLI can check a ``--dtype`` before it loads anything heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4}  # bytes per element
MODEL_DTYPES = ("float32", "bfloat16")


class DtypeError(ValueError):
    """A dtype outside the table; the message names the choices."""


def dtype_bytes(name: str) -> int:
    """Bytes per element of the dtype called ``name``."""
    _check(name)
    return DTYPE_BYTES[name]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name``."""
    import torch

    _check(name)
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of a torch dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise DtypeError(f"no wire name for dtype {dtype}")
    return name


def model_dtype_problem(name: str) -> str:
    """Why ``name`` cannot be a model's dtype (one sentence to prefix with the option's name), or ""."""
    return "" if name in MODEL_DTYPES else f"dtype must be {' or '.join(MODEL_DTYPES)}, not {name}"


def _check(name: str) -> None:
    if name not in DTYPE_BYTES:
        raise DtypeError(f"dtype {name!r} is not one of {', '.join(DTYPE_BYTES)}")
