"""Device names: parsed in one place, a bad one or a missing GPU explained in one line."""

from __future__ import annotations

import pytest

from common.models.devices import (
    DeviceError,
    gpu_index,
    parse_device,
    parse_devices,
    prepare_device,
    presence_problem,
)


@pytest.mark.parametrize(("text", "name"), [("cpu", "cpu"), ("cuda", "cuda"), (" cuda:1 ", "cuda:1"),
                                            ("cuda:12", "cuda:12")])
def test_good_names_parse(text, name):
    assert parse_device(text) == name


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cpu:0", "CUDA:0", "cuda:0,cuda:1", "", "cuda:-1"])
def test_bad_names_are_one_line(text):
    with pytest.raises(DeviceError) as info:
        parse_device(text)
    assert "\n" not in str(info.value) and "is not cpu, cuda or cuda:N" in str(info.value)


def test_device_lists():
    assert parse_devices("cuda:0, cuda:1,") == ("cuda:0", "cuda:1")
    with pytest.raises(DeviceError, match="no device named"):
        parse_devices(" , ")
    with pytest.raises(DeviceError, match="'tpu'"):
        parse_devices("cuda:0,tpu")


def test_gpu_index_and_presence():
    assert (gpu_index("cpu"), gpu_index("cuda"), gpu_index("cuda:3")) == (None, 0, 3)
    assert presence_problem("cpu", 0) is None and presence_problem("cuda:0", 1) is None
    assert presence_problem("cuda:3", 1) == "cuda:3 requested, 1 GPU present"
    assert presence_problem("cuda:2", 2) == "cuda:2 requested, 2 GPUs present"
    assert presence_problem("cuda", 0) == "cuda requested, no GPU present"


def test_prepare_refuses_a_gpu_this_machine_lacks(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="cuda:3 requested, 1 GPU present"):
        prepare_device("cuda:3")
    prepare_device("cpu")  # nothing to check, nothing changed
    assert not torch.are_deterministic_algorithms_enabled()


def test_prepare_on_cuda_makes_torch_deterministic_and_picks_the_gpu(monkeypatch):
    import os

    import torch
    import torch.utils.deterministic

    chosen, modes = [], []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    # The real call takes tens of seconds on a loaded CPU machine (it imports torch's compiler settings).
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only: modes.append((on, warn_only)))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    for name in ("benchmark", "deterministic", "allow_tf32"):
        monkeypatch.setattr(torch.backends.cudnn, name, getattr(torch.backends.cudnn, name))
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    tf32 = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: restored by hand
    try:
        prepare_device("cuda")
        prepare_device("cuda:1")
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert chosen == [0, 1] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert modes == [(True, True)] * 2 and not torch.utils.deterministic.fill_uninitialized_memory
    assert torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32


def test_prepare_on_cuda_leaves_torch_alone_when_not_deterministic(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda *args, **kwargs: pytest.fail("called"))
    prepare_device("cuda:0", deterministic=False)
