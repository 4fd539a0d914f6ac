"""Draft-tree settings from what a person wrote: one syntax, ``key=value``, checked once for every surface.

``flowring up``, ``bench --pin`` and ``profile draft`` take repeated ``--tree key=value`` options; an
inventory's ``[tree]`` table uses the same keys with TOML values. Both come through :func:`tree_settings`,
so a key or value is accepted or refused with the same words everywhere.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping

from common.speculation.modes import DraftSettings

TREE_KEYS = tuple(f.name for f in dataclasses.fields(DraftSettings))
EXPANSIONS = ("grow", "redraft")
_DEFAULTS = DraftSettings()
TREE_HELP = f"A draft-tree setting KEY=VALUE, repeatable, e.g. --tree fill_nodes=32 (keys: {', '.join(TREE_KEYS)})."


class TreeSettingsError(ValueError):
    """A tree setting that does not exist or does not fit its field; one line per problem, naming the key."""


def tree_settings(values: Mapping[str, object], base: DraftSettings | None = None) -> DraftSettings:
    """``base`` (default: the defaults) with ``values`` set; typed values, as a TOML table or JSON gives them."""
    problems: list[str] = []
    changes: dict[str, object] = {}
    for key, value in values.items():
        if key not in TREE_KEYS:
            problems.append(f"unknown tree setting {key!r}; known: {', '.join(TREE_KEYS)}")
            continue
        problem = _problem(key, value)
        if problem:
            problems.append(f"tree setting {key} {problem}, got {value!r}")
        else:
            changes[key] = value
    if problems:
        raise TreeSettingsError("\n".join(problems))
    return dataclasses.replace(base or _DEFAULTS, **changes)  # type: ignore[arg-type]


def parse_tree_options(options: Iterable[str], base: DraftSettings | None = None) -> DraftSettings:
    """``base`` with every ``key=value`` of ``options`` set, later ones winning.

    An option that is a JSON object (``'{"grow_levels": 2}'``, the syntax before ``key=value``) is still read,
    for one release.
    """
    values: dict[str, object] = {}
    for option in options:
        text = option.strip()
        if text.startswith("{"):
            try:
                table = json.loads(text)
            except ValueError as exc:
                raise TreeSettingsError(f"--tree {option!r} is not a JSON object: {exc}") from exc
            if not isinstance(table, dict):
                raise TreeSettingsError(f"--tree {option!r} is not a JSON object")
            values.update(table)
            continue
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise TreeSettingsError(f"--tree takes key=value, got {option!r}; keys: {', '.join(TREE_KEYS)}")
        values[key.strip()] = _from_text(key.strip(), raw.strip())
    return tree_settings(values, base)


def tree_options(settings: DraftSettings) -> list[str]:
    """``settings`` as the ``key=value`` options that differ from the defaults (for printing a command)."""
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in dataclasses.asdict(settings).items()
            if v != getattr(_DEFAULTS, k)]


def _from_text(key: str, raw: str) -> object:
    """A command-line value as its field's type; left as text when it does not parse (``_problem`` says why)."""
    if key not in TREE_KEYS:
        return raw
    kind = type(getattr(_DEFAULTS, key))
    if kind is bool:
        return {"true": True, "false": False, "1": True, "0": False}.get(raw.lower(), raw)
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


def _problem(key: str, value: object) -> str:
    """What ``value`` lacks to fit field ``key`` ("must be ..."), or "" when it fits."""
    kind = type(getattr(_DEFAULTS, key))
    if kind is bool:
        return "" if isinstance(value, bool) else "must be true or false"
    if kind is int:
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return "" if fits else "must be a whole number >= 0"
    if key == "expansion":
        return "" if value in EXPANSIONS else f"must be {' or '.join(EXPANSIONS)}"
    return "" if isinstance(value, str) else "must be text"
