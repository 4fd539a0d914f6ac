"""Board adverts (TXT properties both ways), the placement rule and the inventory TOML `flowring init` writes."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from common.cluster.inventory import InventoryError, parse_inventory
from common.speculation.modes import DraftSettings
from services.discovery.advert import AdvertError, BoardAd, from_properties, to_properties
from services.discovery.drafting import InitOptions, draft_inventory, inventory_toml, place


def ad(name: str, memory_mib: int = 2048, speed: float = 20.0, **fields) -> BoardAd:
    number = int(name[-1]) if name[-1].isdigit() else 9
    return BoardAd(name=name, address=f"10.0.0.{10 + number}", ssh_port=22, user="flowring", cores=4,
                   memory_mib=memory_mib, speed=speed, probe="qwen2-1536x8960 bfloat16 16 rows 4 thread(s)",
                   python="/opt/fr/.venv/bin/python", workdir="/opt/fr", home="/var/lib/flowring", host=name,
                   flowring="0.1.0", torch="2.11.0", **fields)


def as_zeroconf(props: dict[str, str]) -> dict[bytes, bytes]:
    """What python-zeroconf hands a browser: bytes keys and values."""
    return {k.encode(): v.encode() for k, v in props.items()}


def test_an_advert_survives_the_txt_record():
    board = ad("b1", speed=37.25, group="lab")
    back = from_properties(board.address, board.ssh_port, as_zeroconf(to_properties(board)))
    assert back == board
    assert board.instance_name() == "b1.lab._flowring._tcp.local."


@pytest.mark.parametrize(("change", "message"), [
    ({"txtvers": "2"}, "txtvers '2' is not '1'"),
    ({"name": "-bad"}, "name must be letters"),
    ({"cores": "four"}, "board b1 (10.0.0.11): cores must be a positive whole number, got 'four'"),
    ({"memory_mib": "0"}, "memory_mib must be a positive whole number"),
    ({"speed": "nan"}, "speed must be a positive number, got 'nan'"),
    ({"speed": "inf"}, "speed must be a positive number, got 'inf'"),
    ({"python": ""}, "python is missing"),
])
def test_a_malformed_advert_is_refused_in_one_line(change, message):
    props = {**to_properties(ad("b1")), **change}
    with pytest.raises(AdvertError, match=None) as raised:
        from_properties("10.0.0.11", 22, as_zeroconf(props))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_placement_puts_scheduler_and_drafter_on_the_largest_board():
    boards = [ad("b3"), ad("b1"), ad("b2", memory_mib=4096)]
    where = place(boards)
    assert (where.scheduler, where.drafter, where.stages, where.verifier) == ("b2", "b2", ("b1", "b3"), "b3")
    assert place(boards, stages=1).stages == ("b1",)
    assert place(boards, control="b3").stages == ("b1", "b2")
    alone = place([ad("b1")])
    assert (alone.scheduler, alone.stages, alone.verifier) == ("b1", ("b1",), "b1")


def test_placement_refuses_what_cannot_be():
    with pytest.raises(InventoryError, match="no boards found"):
        place([])
    with pytest.raises(InventoryError, match="--control 'b9' is not a board found"):
        place([ad("b1")], control="b9")
    with pytest.raises(InventoryError, match="3 stage board\\(s\\) asked for, but 1 board"):
        place([ad("b1"), ad("b2")], stages=3)


def test_the_written_inventory_reads_back_as_drafted():
    boards = [ad("b1", memory_mib=4096, speed=31.5), ad("b2", speed=18.0), ad("b3", speed=22.75)]
    options = InitOptions(base="/models/base \"q\"", draft="qwen-coder-0.5b", dtype="float32", threads=1,
                          kv_tokens=256, overhead_mib=100.0, identity="/root/.ssh/id_ed25519")
    drafted = dataclasses.replace(draft_inventory(boards, options), layers="0-3,3-4",
                                  tree=DraftSettings(top_k=3, expansion="redraft"))
    text = inventory_toml(drafted, ["written by a test"])
    assert text.startswith("# written by a test\n")
    assert "[timeouts]" not in text and "known_hosts" not in text  # defaults are left out
    assert parse_inventory(tomllib.loads(text)) == drafted
    with_head = dataclasses.replace(drafted, draft="", draft_head="shipped")
    text = inventory_toml(with_head)
    assert 'draft_head = "shipped"' in text and "\ndraft = " not in text
    assert parse_inventory(tomllib.loads(text)) == with_head


def test_only_the_boards_used_are_written():
    boards = [ad("b1", memory_mib=4096), ad("b2"), ad("b3")]
    inv = draft_inventory(boards, InitOptions(base="b", draft="d", stages=1))
    assert [b.name for b in inv.boards] == ["b1", "b2"] and inv.stages == ("b2",)
