"""`--tree key=value` and the inventory's [tree] table: one parser, typed values, one-line errors naming the key."""

from __future__ import annotations

import pytest

from common.speculation.modes import DraftSettings
from common.speculation.tree_options import (
    TREE_KEYS,
    TreeSettingsError,
    parse_tree_options,
    tree_options,
    tree_settings,
)


def test_every_field_of_the_settings_is_a_key():
    assert set(TREE_KEYS) == set(DraftSettings.__dataclass_fields__)


def test_key_value_options_set_typed_fields_and_the_last_one_wins():
    settings = parse_tree_options(["fill_nodes=32", "expansion=redraft", "adaptive=false", "fill_nodes = 40"])
    assert (settings.fill_nodes, settings.expansion, settings.adaptive) == (40, "redraft", False)
    assert settings.top_k == DraftSettings().top_k  # untouched keys keep their defaults


def test_options_apply_over_a_base():
    base = DraftSettings(top_k=2)
    assert parse_tree_options(["grow_levels=1"], base) == DraftSettings(top_k=2, grow_levels=1)


def test_the_json_object_of_the_previous_release_still_reads():
    assert parse_tree_options(['{"grow_levels": 2}', "top_k=3"]) == DraftSettings(grow_levels=2, top_k=3)


def test_printing_then_parsing_gives_the_same_settings():
    settings = DraftSettings(fill_nodes=9, expansion="redraft", adaptive=False)
    assert parse_tree_options(tree_options(settings)) == settings
    assert tree_options(DraftSettings()) == []


def test_an_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(TreeSettingsError) as exc:
        parse_tree_options(["depth=3"])
    assert str(exc.value).startswith("unknown tree setting 'depth'; known: top_k, fill_nodes")


@pytest.mark.parametrize("option, expected", [
    ("fill_nodes=many", "tree setting fill_nodes must be a whole number >= 0, got 'many'"),
    ("fill_nodes=-1", "tree setting fill_nodes must be a whole number >= 0, got -1"),
    ("adaptive=maybe", "tree setting adaptive must be true or false, got 'maybe'"),
    ("expansion=sideways", "tree setting expansion must be grow or redraft, got 'sideways'"),
    ("fill_nodes", "--tree takes key=value, got 'fill_nodes'"),
    ("{not json", "--tree '{not json' is not a JSON object"),
])
def test_a_bad_value_is_one_line_naming_the_key(option, expected):
    with pytest.raises(TreeSettingsError) as exc:
        parse_tree_options([option])
    assert str(exc.value).startswith(expected)


def test_typed_values_follow_the_same_rules_and_report_every_problem():
    assert tree_settings({"top_k": 2, "adaptive": False}) == DraftSettings(top_k=2, adaptive=False)
    with pytest.raises(TreeSettingsError) as exc:
        tree_settings({"top_k": "four", "adaptive": 1, "width": 2})
    lines = str(exc.value).splitlines()
    assert len(lines) == 3 and {ln.split()[2] for ln in lines[:2]} == {"top_k", "adaptive"}
