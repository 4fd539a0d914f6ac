"""``flowring up`` and ``flowring down``: a local cluster on loopback, or a ring of boards from an inventory."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from common.cluster.settings import Admission, Timeouts
from common.cluster.spec_builder import ClusterRequest
from common.models.dtypes import model_dtype_problem
from common.speculation.modes import MODES, DraftSettings
from common.speculation.tree_options import TREE_HELP, TreeSettingsError, parse_tree_options
from services.cli.errors import fail
from services.launcher import LaunchError, local_spec, running, start, start_api, stop
from services.run_folder import RunFolder, default_run_dir

RunDir = Annotated[Path, typer.Option("--run-dir", envvar="FLOWRING_RUN_DIR", help="Where the cluster keeps state.")]
CLUSTER_HELP = "TOML inventory of boards (see infra/lan.example.toml): start the ring on them over SSH."
KEYS_HELP = "CURVE keys of the --cluster inventory (`flowring keys create`; default: FLOWRING_HOME/keys/<file stem>)."
KeysDir = Annotated[Path | None, typer.Option("--keys-dir", help=KEYS_HELP)]
DEFAULT_RUN_DIR = default_run_dir()


def up(
    cluster: Annotated[Path | None, typer.Option("--cluster", help=CLUSTER_HELP)] = None,
    base: Annotated[str, typer.Option(help="Base model: catalog name, Hugging Face folder or .gguf file.")] = "",
    draft: Annotated[str, typer.Option(help="Draft model: catalog name, Hugging Face folder or .gguf file.")] = "",
    draft_head: Annotated[str, typer.Option(help="Draft with this head (folder, or name in the heads cache) "
                                                 "instead of a draft model.")] = "",
    model: Annotated[str, typer.Option(help="A catalog pair (qwen-coder, smollm2) instead of --base/--draft.")] = "",
    no_head: Annotated[bool, typer.Option("--no-head", help="Draft with the draft model even where a head ships "
                                                             "for the base.")] = False,
    draft_vocab: Annotated[int, typer.Option(min=0, help="The draft model proposes only its N most frequent tokens "
                                                         "(counted offline, saved beside it); 0: every token.")] = 0,
    stages: Annotated[str, typer.Option(help="Pipeline stages the base model is split into, or auto.")] = "auto",
    mode: Annotated[str, typer.Option(help="Default decoding mode of requests that name none: ar, chunk, "
                                           "pipedec, flowspec, or auto (chosen from the machine's cores).")] = "auto",
    layers: Annotated[str, typer.Option(help="Explicit layer ranges per stage, e.g. 0-10,10-20,20-28.")] = "",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "bfloat16",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N: where every service runs.")] = "cpu",
    devices: Annotated[str, typer.Option(help="Spread the stages over these devices in order, e.g. cuda:0,cuda:1 "
                                              "(drafter with the first stage, verifier with the last); "
                                              "overrides --device.")] = "",
    threads: Annotated[int, typer.Option(help="Torch threads per service (0: torch default).")] = 0,
    deterministic: Annotated[bool, typer.Option("--deterministic/--nondeterministic", help="On CUDA: torch's "
                                                "deterministic algorithms in every service (docs/gpu.md).")] = True,
    row_invariant: Annotated[bool, typer.Option("--row-invariant/--fused-numerics", help="Each row of a segment computed bitwise as it would be alone "
                                                     "(reproducible greedy output in every mode); --fused-numerics: "
                                                     "the faster fused kernels.")] = True,
    tree: Annotated[list[str] | None, typer.Option("--tree", help=TREE_HELP)] = None,
    speculation_budget: Annotated[int, typer.Option(min=0, help="Draft nodes (roots included) of all the requests "
                                                    "in flight together: each tree shrinks as the load grows, and a "
                                                    "request whose share is its root alone drafts nothing (ar's "
                                                    "work); 0: chosen from the machine's cores.")] = 0,
    speculation_max_in_flight: Annotated[int, typer.Option(min=-1, help="With more requests in flight than this, "
                                                           "none speculates (each sends its next token alone, as "
                                                           "ar does); 0: no limit; -1: chosen from the machine's "
                                                           "cores.")] = -1,
    max_prompt_tokens: Annotated[int, typer.Option(min=0, help="Refuse prompts longer than this many tokens "
                                                              "(0: the model's context).")] = 0,
    request_timeout: Annotated[float, typer.Option(min=1.0, help="Seconds from a request's submission (queue "
                                                                 "time included) until it fails (its deadline).")] = 600.0,
    api_port: Annotated[int, typer.Option(min=0, max=65535, help="Serve the OpenAI-compatible API on "
                                          "127.0.0.1:PORT beside a local cluster (0: no API).")] = 8000,
    scheduler_standby: Annotated[float, typer.Option(min=0.0, help="Keep a warm standby scheduler, started this "
                                                     "many seconds after the scheduler, to take over at once if it "
                                                     "dies (0: none, a cold restart).")] = 5.0,
    run_dir: RunDir = DEFAULT_RUN_DIR,
    log_level: Annotated[str, typer.Option(help="debug, info or warning.")] = "info",
    keys_dir: KeysDir = None,
) -> None:
    """Start a cluster and return when every service is ready: local processes on loopback, or with
    --cluster FILE every service on its board over SSH (models, split and settings from the file), every
    ZeroMQ socket encrypted and authenticated with the keys of `flowring keys create`."""
    if running(run_dir):
        fail(f"a cluster is already running from {run_dir}: run `flowring down` first")
    if cluster is not None:
        if base or draft or draft_head or model or layers or draft_vocab or no_head or tree:
            fail("--cluster takes the models, layers and tree from the file; drop --model, --base, --draft, "
                 "--draft-head, --no-head, --draft-vocab, --layers and --tree")
        _up_boards(cluster, run_dir, log_level, keys_dir)
        return
    if problem := model_dtype_problem(dtype):
        fail(f"--{problem}")
    _check_devices(device, devices)
    try:
        settings = parse_tree_options(tree or ())
    except TreeSettingsError as exc:
        fail(str(exc))
    if mode != "auto" and mode not in MODES:
        fail(f"--mode must be auto or one of {', '.join(MODES)}, not {mode}")
    if draft_vocab and draft_head:
        fail("--draft-vocab applies to a draft model; a head's vocabulary was chosen when it was trained")
    _up_local(base, draft, draft_head, model, no_head or bool(draft_vocab), _stage_count(stages), layers, settings,
              run_dir, log_level,
              dtype=dtype, device=device, threads=threads, mode=mode, api_port=api_port, draft_vocab=draft_vocab,
              row_invariant=row_invariant, max_prompt_tokens=max_prompt_tokens, request_timeout=request_timeout,
              devices=devices, deterministic=deterministic, scheduler_standby=scheduler_standby,
              speculation_budget=speculation_budget, speculation_max_in_flight=speculation_max_in_flight)


def _check_devices(device: str, devices: str) -> None:
    """Fail in one line on a bad device name or a GPU this machine does not have."""
    from common.models.devices import DeviceError, parse_device, parse_devices, presence_problem

    try:
        names = parse_devices(devices) if devices else (parse_device(device),)
    except DeviceError as exc:
        fail(f"--devices: {exc}" if devices else f"--device: {exc}")
    if any(name.startswith("cuda") for name in names):
        import torch

        gpus = torch.cuda.device_count()
        for name in names:
            if problem := presence_problem(name, gpus):
                fail(problem)


def _prepare_draft_vocab(draft_dir: Path, size: int) -> str:
    """Count (or read) the draft model's reduced vocabulary now, so its services start without counting."""
    from common.models.modeling import load_model_spec
    from common.speculation.draft_vocab import draft_vocabulary

    vocab = load_model_spec(draft_dir).vocab_size
    draft_ids = draft_vocabulary(draft_dir, size)
    return f"{vocab if draft_ids is None else len(draft_ids)} of {vocab} tokens"


def down(run_dir: RunDir = DEFAULT_RUN_DIR) -> None:
    """Stop the cluster, local or on every board; no process is left behind."""
    from services.cluster.bringup import down as down_boards

    try:
        stopped = down_boards(run_dir) if RunFolder(run_dir).boards.exists() else stop(run_dir)
    except LaunchError as exc:
        fail(str(exc))
    typer.echo(f"stopped {len(stopped)} service(s)" if stopped else "no cluster running")


def _up_local(base: str, draft: str, draft_head: str, model: str, no_head: bool, stage_count: int, layers: str,
              settings: DraftSettings, run_dir: Path, log_level: str, *, dtype: str, device: str, threads: int,
              mode: str, api_port: int, draft_vocab: int = 0, row_invariant: bool = True, max_prompt_tokens: int = 0,
              request_timeout: float = 600.0, devices: str = "", deterministic: bool = True,
              scheduler_standby: float = 0.0, speculation_budget: int = 0,
              speculation_max_in_flight: int = -1) -> None:
    pair_draft = ""
    if model:
        from common.models.catalog import default_pair

        try:
            base, pair_draft = default_pair(model)
        except (KeyError, ValueError) as exc:
            fail(str(exc))
    if not base:
        fail("give --model NAME, or --base (with --draft or --draft-head to choose the drafter), or --cluster FILE")
    from common.cluster.machine_defaults import choose_budget, choose_mode
    from common.cluster.partition import explicit_ranges
    from common.models.catalog import ModelStoreError
    from common.models.modeling import load_model_spec
    from common.models.modeling.tokenizer import check_same_tokenizer
    from common.models.store import resolve

    try:
        base_dir = resolve(base)
        drafting = choose_drafting(base_dir, draft=draft, draft_head=draft_head, no_head=no_head,
                                   fallback_draft=pair_draft)
        head_dir = drafting.head
        draft_dir = None if head_dir else resolve(drafting.draft)
        if draft_dir:
            check_same_tokenizer(base_dir, draft_dir)
        ranges = explicit_ranges(layers, load_model_spec(base_dir).num_layers) if layers else None
        stage_count = len(ranges) if ranges else stage_count
        on_cpu = device == "cpu" and not devices
        row_cost = (lambda: _row_cost(dtype, threads)) if on_cpu else None
        choice = choose_mode(os.cpu_count() or 1, stage_count, drafter="head" if head_dir else "model",
                             row_cost=row_cost)
        default_mode = choice.mode if mode == "auto" else mode
        budget = choose_budget(os.cpu_count() or 1, stage_count, drafter="head" if head_dir else "model",
                               row_cost=row_cost)
        chosen = not speculation_budget and speculation_max_in_flight < 0
        speculation_budget = speculation_budget or budget.total_nodes
        if speculation_max_in_flight < 0:
            speculation_max_in_flight = budget.max_in_flight
        asked = ClusterRequest(base=str(base_dir), draft=str(draft_dir or ""), draft_head=str(head_dir or ""),
                               draft_vocab=draft_vocab, dtype=dtype, device=device, threads=threads,
                               row_invariant=row_invariant, deterministic=deterministic, draft_settings=settings,
                               timeouts=Timeouts(request_timeout_s=request_timeout),
                               admission=Admission(max_prompt_tokens=max_prompt_tokens), default_mode=default_mode,
                               speculation_budget=speculation_budget,
                               speculation_max_in_flight=speculation_max_in_flight)
        spec = local_spec(asked, stage_count, ranges)
        if devices:
            from common.cluster.devices import device_table, spread_text

            spec = spread_text(devices, spec)
            typer.echo("devices: " + ", ".join(f"{name} {dev}" for name, dev in device_table(spec)))
        drafting_text = f"head {head_dir.name}" if head_dir else f"draft {draft_dir.name}"
        if draft_vocab:
            drafting_text += f" over {_prepare_draft_vocab(draft_dir, draft_vocab)}"
        typer.echo(f"starting {stage_count} stage(s) of {base_dir.name} with {drafting_text} ...")
        typer.echo(f"drafting with {drafting.note}")
        typer.echo(f"default mode: {default_mode} " + (f"({choice.reason})" if mode == "auto" else "(--mode)"))
        most = f", none beyond {speculation_max_in_flight} in flight" if speculation_max_in_flight else ""
        typer.echo(f"speculation budget: {speculation_budget} draft nodes of all requests in flight{most} "
                   + (f"({budget.reason})" if chosen else "(--speculation-budget, --speculation-max-in-flight)"))
        start(spec, run_dir, log_level=log_level, scheduler_standby_s=scheduler_standby or None)
        api = start_api(spec, run_dir, api_port) if api_port else ""
    except (LaunchError, ModelStoreError, ValueError, OSError) as exc:
        if running(run_dir):
            stop(run_dir)
        fail(str(exc))
    s = spec.scheduler
    typer.echo(f"flowring is up: scheduler at {s.endpoint(s.client_port)}, logs in {RunFolder(run_dir).logs}")
    if api:
        typer.echo(f"  OpenAI API: {api}  (curl {api}/models)")
    typer.echo('  generate:  .venv/bin/flowring generate "Write a haiku about rings" --max-new-tokens 64')
    typer.echo("  status:    .venv/bin/flowring status")
    typer.echo(f"  logs:      tail -f {RunFolder(run_dir).logs}/*.log")
    typer.echo("  stop:      .venv/bin/flowring down")


def _row_cost(dtype: str, threads: int) -> float:
    """What a 16-row forward costs in one-row forwards here, with a ring service's threads (measured once, cached
    in FLOWRING_HOME/agent)."""
    import torch

    from common.cluster.machine_defaults import CORES_PER_SERVICE_FOR_OVERLAP
    from common.models.cache import cache_root
    from services.discovery.speed import measured_row_cost

    before = torch.get_num_threads()
    torch.set_num_threads(threads or CORES_PER_SERVICE_FOR_OVERLAP)
    try:
        measured = measured_row_cost(cache_root(), dtype)
    finally:
        torch.set_num_threads(before)
    if not measured.cached:
        typer.echo(f"row cost on this CPU: {measured.value:.1f} ({measured.probe}; measured in {measured.seconds:.1f} s, "
                   "cached)")
    return measured.value


@dataclass(frozen=True)
class Drafting:
    """What a local cluster drafts with: a head folder, else a draft model reference; and why, for people."""

    head: Path | None
    draft: str
    note: str


def choose_drafting(base_dir: Path, *, draft: str, draft_head: str, no_head: bool, fallback_draft: str) -> Drafting:
    """``--draft-head``, else ``--draft``, else the head shipped for the base (unless ``no_head``, and only if
    its recorded acceptance earns the default: ``good_enough_for_default``), else ``fallback_draft`` (the
    catalog pair's draft model). ``ValueError`` when nothing is left."""
    from common.speculation.heads.shipped import (
        DEFAULT_MIN_TOKENS_PER_ROUND,
        good_enough_for_default,
        head_for_base,
    )
    from common.speculation.heads.store import acceptance_line

    if draft_head:
        head = _head_dir(draft_head, base_dir)
        return Drafting(head, "", f"the head {head.name} (--draft-head)")
    if draft:
        return Drafting(None, draft, f"the draft model {draft} (--draft)")
    head = None if no_head else head_for_base(base_dir)
    if head is not None and (good_enough_for_default(head) or not fallback_draft):
        other = f"--draft {fallback_draft}" if fallback_draft else "--draft MODEL"
        return Drafting(head.resolve(), "", f"the head {head.name} shipped for this base ({acceptance_line(head)}); "
                                            f"{other} or --no-head drafts with a draft model")
    if no_head:
        why = "--no-head"
    elif head is not None:
        why = (f"the head shipped for this base records {acceptance_line(head)}, under the "
               f"{DEFAULT_MIN_TOKENS_PER_ROUND} code tokens per round a default head needs; "
               f"--draft-head {head} drafts with it")
    else:
        why = "no head ships for this base"
    if not fallback_draft:
        raise ValueError(f"{why}: name a drafter with --draft MODEL or --draft-head HEAD")
    return Drafting(None, fallback_draft, f"the draft model {fallback_draft} ({why})")


def _head_dir(ref: str, base_dir: Path) -> Path:
    """A head folder (a path, else a name in the heads cache), checked against the base."""
    from common.speculation.heads.model import check_head
    from common.speculation.heads.store import heads_dir

    path = Path(ref).expanduser()
    path = path if path.is_dir() else heads_dir() / ref
    check_head(path, base_dir)  # HeadMismatchError (a ValueError) names the mismatch in one line
    return path.resolve()


def keys_folder(cluster: Path, keys_dir: Path | None) -> Path:
    """The keys folder of inventory ``cluster``: ``keys_dir`` if given, else its default under FLOWRING_HOME."""
    from common.cluster.keys import default_keys_dir
    from common.models.cache import cache_root

    return keys_dir if keys_dir is not None else default_keys_dir(cache_root(), cluster)


def _up_boards(cluster: Path, run_dir: Path, log_level: str, keys_dir: Path | None) -> None:
    from common.cluster.inventory import InventoryError, load_inventory
    from common.cluster.keys import load_keys
    from common.cluster.partition import PartitionError, human_bytes
    from common.models.cache import cache_root
    from common.models.catalog import ModelStoreError
    from common.models.modeling import ModelingError
    from common.wire.curve import CurveKeyError
    from services.cluster.bringup import build_slices, plan, preflight, ship
    from services.cluster.bringup import start as start_boards
    from services.cluster.ssh import Ssh

    began = time.monotonic()
    try:
        inv = load_inventory(cluster)
        keys = load_keys(keys_folder(cluster, keys_dir), [b.name for b in inv.boards], cluster)
        ssh = Ssh(inv.ssh)
        typer.echo(f"planning {len(inv.services())} services on {len(inv.boards)} board(s) from {cluster} ...")
        bringup = plan(inv, keys)
        preflight(bringup, ssh)
        typer.echo("every board passed its checks (reachable, same flowring, torch, memory, ports free)")
        bringup = build_slices(bringup, cache_root() / "slices")
        shipped = ship(bringup, ssh, run_dir / "services")
        for board, size in shipped.items():
            typer.echo(f"  {board}: shipped {size} bytes of weights ({human_bytes(size)})")
        typer.echo(f"starting {len(bringup.services)} services ...")
        pids = start_boards(bringup, ssh, run_dir, log_level=log_level)
    except (InventoryError, CurveKeyError, PartitionError, LaunchError, ModelStoreError, ModelingError,
            OSError) as exc:
        fail(str(exc))
    s = bringup.spec.scheduler
    typer.echo(f"flowring is up in {time.monotonic() - began:.1f} s: scheduler at {s.endpoint(s.client_port)}, "
               f"{sum(shipped.values())} bytes of weights shipped")
    for service in bringup.services:
        typer.echo(f"  {service.name:<10} {service.board.name:<12} pid {pids[service.name]:<8} log {service.log}")


def _stage_count(stages: str) -> int:
    """``auto``: a stage per three cores (drafter and verifier need theirs too), between 1 and 4."""
    if stages == "auto":
        return max(1, min(4, (os.cpu_count() or 1) // 3))
    if not stages.isdigit() or int(stages) < 1:
        fail(f"--stages must be a positive number or auto, not {stages}")
    return int(stages)
