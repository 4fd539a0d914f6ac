"""The one dtype table: names, sizes and torch dtypes agree; unknown names are refused with the choices."""

from __future__ import annotations

import pytest
import torch

from common.models.dtypes import (
    DTYPE_BYTES,
    MODEL_DTYPES,
    DtypeError,
    dtype_bytes,
    dtype_name,
    model_dtype_problem,
    torch_dtype,
)


@pytest.mark.parametrize("name", sorted(DTYPE_BYTES))
def test_each_name_is_a_torch_dtype_of_its_size(name):
    dtype = torch_dtype(name)
    assert dtype.itemsize == dtype_bytes(name) == DTYPE_BYTES[name]
    assert dtype_name(dtype) == name


def test_bfloat16_and_float16_share_a_width_but_not_a_name():
    assert dtype_bytes("bfloat16") == dtype_bytes("float16")
    assert dtype_name(torch.bfloat16) != dtype_name(torch.float16)


def test_unknown_dtypes_are_refused():
    with pytest.raises(DtypeError, match="float64"):
        torch_dtype("float64")
    with pytest.raises(DtypeError):
        dtype_bytes("int8")
    with pytest.raises(DtypeError):
        dtype_name(torch.float64)


def test_models_run_in_float32_or_bfloat16_only():
    assert MODEL_DTYPES == ("float32", "bfloat16")
    assert [model_dtype_problem(n) for n in MODEL_DTYPES] == ["", ""]
    assert model_dtype_problem("float16") == "dtype must be float32 or bfloat16, not float16"
