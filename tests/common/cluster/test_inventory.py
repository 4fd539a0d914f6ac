"""The cluster inventory: the example parses; each problem is one line."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from common.cluster.inventory import Inventory, InventoryError, load_inventory, parse_inventory

EXAMPLE = Path(__file__).resolve().parents[3] / "infra" / "lan.example.toml"


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_example_describes_five_boards_and_every_service():
    inv = load_inventory(EXAMPLE)
    assert isinstance(inv, Inventory)
    assert [b.name for b in inv.boards] == [f"board-{i}" for i in range(1, 6)]
    assert inv.services() == [("scheduler", "board-1"), ("drafter", "board-1"), ("stage-1", "board-2"),
                              ("stage-2", "board-3"), ("stage-3", "board-4"), ("verifier", "board-5")]
    assert (inv.dtype, inv.layers, inv.base_port, inv.tree.top_k) == ("bfloat16", "auto", 7700, 4)
    assert inv.board("board-2").relative_speed == 4.0  # no measured speed: the core count


def _broken(edit) -> list[str]:
    data = copy.deepcopy(example())
    edit(data)
    with pytest.raises(InventoryError) as info:
        parse_inventory(data)
    return str(info.value).splitlines()


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["boards"][1].pop("memory_mib"), "board board-2: memory_mib is missing"),
    (lambda d: d["boards"][0].update(address="-oProxyCommand=x"), "board board-1: address must be"),
    (lambda d: d["boards"][0].update(home="~/flowring"), "board board-1: home must be an absolute path"),
    (lambda d: d["boards"][0].update(user="a b"), "board board-1: user must be a login name"),
    (lambda d: d["boards"][2].update(ssh_port=0), "board board-3: ssh_port must be a whole number"),
    (lambda d: d["boards"][2].update(gpu=1), "board board-3: unknown field(s) gpu"),
    (lambda d: d["boards"].append(dict(d["boards"][0])), "board board-1 appears twice"),
    (lambda d: d["placement"].update(verifier="board-9"), "placement.verifier must name a board"),
    (lambda d: d["placement"].update(stages=["board-2", "board-2"]), "placement.stages: board board-2 holds two stages"),
    (lambda d: d["placement"].update(stages=[]), "placement.stages must list one board per pipeline stage"),
    (lambda d: d["placement"].update(layers="half"), "placement.layers must be \"auto\" or ranges"),
    (lambda d: d["models"].update(dtype="float16"), "models.dtype must be one of float32, bfloat16"),
    (lambda d: d["models"].pop("base"), "models.base must name a model"),
    (lambda d: d["tree"].update(top_k="four"), "[tree]: tree setting top_k must be a whole number >= 0, got 'four'"),
    (lambda d: d["tree"].update(depth=3), "[tree]: unknown tree setting 'depth'; known: top_k"),
    (lambda d: d.update(extra={}), "unknown section [extra]"),
    (lambda d: d["boards"][1].update(speed=40.0), "speed must be given on every stage board or on none"),
    (lambda d: d.pop("boards"), "no boards"),
])
def test_each_problem_is_one_clear_line(edit, expected):
    lines = _broken(edit)
    assert any(line.startswith(expected) for line in lines), lines


def test_measured_speeds_on_every_stage_board_are_accepted():
    data = example()
    for board in data["boards"][1:4]:
        board["speed"] = 30.0
    assert parse_inventory(data).board("board-3").relative_speed == 30.0


def test_several_problems_are_reported_together():
    def edit(d):
        d["boards"][0].pop("cores")
        d["ports"]["base"] = 80
    lines = _broken(edit)
    assert len(lines) == 2 and "cores is missing" in lines[0] and lines[1].startswith("ports.base must be a whole number")


def test_unreadable_and_malformed_files_are_errors(tmp_path):
    with pytest.raises(InventoryError, match="cannot read"):
        load_inventory(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[models\n")
    with pytest.raises(InventoryError, match="not valid TOML"):
        load_inventory(bad)


def test_the_example_drafts_with_the_shipped_head_and_a_draft_model_still_parses():
    inv = load_inventory(EXAMPLE)
    assert (inv.draft_head, inv.draft) == ("shipped", "")
    data = example()
    data["models"].pop("draft_head")
    data["models"]["draft"] = "qwen-coder-0.5b"
    assert (parse_inventory(data).draft, parse_inventory(data).draft_head) == ("qwen-coder-0.5b", "")


@pytest.mark.parametrize(("models", "expected"), [
    ({"draft": "qwen-coder-0.5b"}, "models: give draft (a draft model) or draft_head (a head), not both"),
    ({"draft_head": 3}, "models.draft_head must be \"shipped\""),
    ({"draft_head": ""}, "models.draft must name a model"),
])
def test_a_drafter_is_a_draft_model_or_a_head(models, expected):
    lines = _broken(lambda d: d["models"].update(models))
    assert any(line.startswith(expected) for line in lines), lines


def test_a_board_may_name_its_own_device():
    from common.cluster.layout import cluster_spec

    data = example()
    data["models"]["device"] = "cuda"
    data["boards"][2]["device"] = "cuda:1"
    inv = parse_inventory(data)
    assert inv.board("board-3").device == "cuda:1" and inv.board("board-2").device == ""
    spec = cluster_spec(inv, "/m/base", "/m/draft", [(0, 4), (4, 8), (8, 12)])
    assert [spec.device_of(p.name) for p in spec.ring] == ["cuda", "cuda", "cuda:1", "cuda", "cuda"]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["boards"][2].update(device="gpu1"), "board board-3: device: device 'gpu1' is not cpu, cuda"),
    (lambda d: d["models"].update(device="cuda:x"), "models.device: device 'cuda:x' is not cpu, cuda"),
])
def test_a_bad_device_is_one_line(edit, expected):
    lines = _broken(edit)
    assert any(line.startswith(expected) for line in lines), lines
