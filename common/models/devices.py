"""Torch device names a service may run on, checked before anything is loaded, and one place that makes
CUDA numerics reproducible run to run.

Pure parsing (``parse_device``, ``parse_devices``, ``presence_problem``) takes names as the CLI and the
inventory give them; ``prepare_device`` is what a service calls once at start, before its model loads.
"""

from __future__ import annotations

import os
import re

_DEVICE = re.compile(r"(cpu|cuda)(?::(\d{1,3}))?")
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's documented setting for deterministic results (needs a few MiB of workspace)


class DeviceError(ValueError):
    """A device name that is not cpu, cuda or cuda:N, or a GPU that is not present; one line."""


def parse_device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whitespace stripped); ``DeviceError`` for anything else."""
    name = text.strip()
    match = _DEVICE.fullmatch(name)
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise DeviceError(f"device {text!r} is not cpu, cuda or cuda:N (N a GPU index)")
    return name


def parse_devices(text: str) -> tuple[str, ...]:
    """A comma-separated list of device names, e.g. ``cuda:0,cuda:1``; at least one."""
    names = tuple(parse_device(part) for part in text.split(",") if part.strip())
    if not names:
        raise DeviceError(f"no device named in {text!r}: give e.g. cuda:0,cuda:1")
    return names


def gpu_index(device: str) -> int | None:
    """The GPU index ``device`` names (``cuda`` is GPU 0), None for the CPU."""
    name = parse_device(device)
    if name == "cpu":
        return None
    return int(name.split(":")[1]) if ":" in name else 0


def presence_problem(device: str, gpus: int) -> str | None:
    """Why ``device`` cannot run on a machine with ``gpus`` CUDA GPUs, in one line; None when it can."""
    index = gpu_index(device)
    if index is None or index < gpus:
        return None
    present = "no GPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus != 1 else ''}"
    return f"{device} requested, {present} present"


def prepare_device(device: str, deterministic: bool = True) -> None:
    """Check that ``device`` exists here and, on CUDA (unless ``deterministic`` is off), make torch's numerics
    reproducible run to run.

    Called once at a service's start, before any CUDA work: ``CUBLAS_WORKSPACE_CONFIG`` must be set
    before cuBLAS starts. What torch still cannot make deterministic is listed in docs/gpu.md.
    """
    import torch

    problem = presence_problem(device, torch.cuda.device_count() if device.startswith("cuda") else 0)
    if problem is not None:
        raise DeviceError(problem)
    if device.startswith("cuda"):
        if deterministic:
            deterministic_cuda()
        torch.cuda.set_device(gpu_index(device))  # "cuda" alone is GPU 0 (set_device refuses a device without index)


def deterministic_cuda() -> None:
    """Deterministic algorithms where torch has them (a warning, not an error, where it has none); no
    uninitialised-memory filling (that costs a kernel per allocation and nothing here reads unwritten rows);
    no TF32; cuDNN without autotuning."""
    import torch
    import torch.utils.deterministic

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
