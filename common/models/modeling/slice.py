"""A contiguous slice of a Llama / Qwen2 decoder with tree-attention support.

The maths mirrors Hugging Face's Llama / Qwen2 implementations (RMSNorm in float32, RoPE
over absolute position ids, grouped-query attention, SwiGLU MLP) but runs on one unbatched
sequence of rows whose attention pattern is an arbitrary boolean matrix, and stores keys
and values in a ``KVCache`` we can compact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.models.modeling import invariant
from common.models.modeling.kv_cache import KVCache
from common.models.modeling.spec import ModelSpec


def causal_attend(past: int, length: int, *, device: torch.device | str = "cpu") -> Tensor:
    """Causal mask ``[length, past + length]``: row ``i`` sees the past and new rows ``<= i``."""
    if past < 0 or length < 0:
        raise ValueError(f"past and length must be non-negative, got {past} and {length}")
    keys = torch.arange(past + length, device=device)  # [past + L]
    rows = torch.arange(length, device=device) + past  # [L]
    return keys[None, :] <= rows[:, None]  # [L, past + L]


def rope_inv_freq(spec: ModelSpec, device: torch.device | str = "cpu") -> Tensor:
    """Inverse RoPE frequencies ``[head_dim / 2]`` in float32, llama3 scaling applied."""
    dim = spec.head_dim
    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    inv_freq = 1.0 / (spec.rope_theta**exponent)  # [D/2]
    scaling = spec.rope_scaling
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled by a learnt weight."""

    def __init__(self, size: int, eps: float, *, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention over cached keys plus the new rows.

    ``row_invariant``: each row computed as it would be alone (``common.models.modeling.invariant``),
    else the whole segment in one fused kernel call.
    """

    def __init__(self, spec: ModelSpec, *, dtype: torch.dtype, row_invariant: bool) -> None:
        super().__init__()
        self.row_invariant = row_invariant
        h, d = spec.hidden_size, spec.head_dim
        self.num_heads = spec.num_heads
        self.num_kv_heads = spec.num_kv_heads
        self.head_dim = d
        self.q_proj = nn.Linear(h, spec.num_heads * d, bias=spec.qkv_bias, dtype=dtype)
        self.k_proj = nn.Linear(h, spec.num_kv_heads * d, bias=spec.qkv_bias, dtype=dtype)
        self.v_proj = nn.Linear(h, spec.num_kv_heads * d, bias=spec.qkv_bias, dtype=dtype)
        self.o_proj = nn.Linear(spec.num_heads * d, h, bias=spec.o_bias, dtype=dtype)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attend: Tensor | None, cache: KVCache, layer: int
    ) -> Tensor:
        q, k, v = self.project(x, cos, sin)
        keys, values = cache.extend(layer, k, v)  # [Hkv, T, D] each
        return self.output(self.attention(q, keys, values, attend))

    def project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``[Hq, L, D]``, keys and values ``[Hkv, L, D]`` of rows ``x`` ``[L, H]``, RoPE applied."""
        n = x.shape[0]
        linear = invariant.linear if self.row_invariant else _apply
        q = linear(self.q_proj, x).view(n, self.num_heads, self.head_dim).transpose(0, 1)  # [Hq, L, D]
        k = linear(self.k_proj, x).view(n, self.num_kv_heads, self.head_dim).transpose(0, 1)  # [Hkv, L, D]
        v = linear(self.v_proj, x).view(n, self.num_kv_heads, self.head_dim).transpose(0, 1)  # [Hkv, L, D]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def attention(self, q: Tensor, keys: Tensor, values: Tensor, attend: Tensor | None) -> Tensor:
        """Attention of queries ``[Hq, L, D]`` over keys and values ``[Hkv, T, D]``: ``[L, Hq * D]``."""
        n = q.shape[1]
        if self.row_invariant:
            out = invariant.attention(q, keys, values, attend)  # [Hq, L, D]
            return out.transpose(0, 1).reshape(n, self.num_heads * self.head_dim)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(0),  # [1, Hq, L, D]
            keys.unsqueeze(0),  # [1, Hkv, T, D]
            values.unsqueeze(0),  # [1, Hkv, T, D]
            attn_mask=attend,  # [L, T] or None: every key
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # [1, Hq, L, D]
        return out[0].transpose(0, 1).reshape(n, self.num_heads * self.head_dim)

    def output(self, mixed: Tensor) -> Tensor:
        """The output projection of attended rows ``[L, Hq * D]``."""
        return (invariant.linear if self.row_invariant else _apply)(self.o_proj, mixed)


class MLP(nn.Module):
    """SwiGLU feed-forward block; ``row_invariant`` as for :class:`Attention`."""

    def __init__(self, spec: ModelSpec, *, dtype: torch.dtype, row_invariant: bool) -> None:
        super().__init__()
        self.row_invariant = row_invariant
        h, m = spec.hidden_size, spec.intermediate_size
        self.gate_proj = nn.Linear(h, m, bias=spec.mlp_bias, dtype=dtype)
        self.up_proj = nn.Linear(h, m, bias=spec.mlp_bias, dtype=dtype)
        self.down_proj = nn.Linear(m, h, bias=spec.mlp_bias, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        linear = invariant.linear if self.row_invariant else _apply
        return linear(self.down_proj, F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x))


class DecoderLayer(nn.Module):
    """Pre-norm attention block followed by a pre-norm MLP block, both residual."""

    def __init__(self, spec: ModelSpec, *, dtype: torch.dtype, row_invariant: bool) -> None:
        super().__init__()
        self.input_layernorm: RMSNorm | nn.Identity = RMSNorm(  # a draft head's is Identity
            spec.hidden_size, spec.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(spec, dtype=dtype, row_invariant=row_invariant)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(spec, dtype=dtype, row_invariant=row_invariant)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attend: Tensor | None, cache: KVCache, layer: int
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class ModelSlice(nn.Module):
    """Decoder layers ``[first, last)`` of a model, optionally with the embedding and/or the head.

    The range may be empty (``first == last``) for a slice holding only the embedding and/or
    the head, e.g. a verifier that turns the last stage's hidden states into logits.
    Parameters are allocated uninitialised (``torch.empty``); ``load_slice`` fills them from a
    checkpoint. Submodule names mirror Hugging Face's, minus the ``model.`` prefix, and layer
    ``i`` of the model is ``layers[i - first]``. With ``row_invariant`` (the default) every row's
    hidden state, keys, values and logits are bitwise what that row gets alone, whatever rows share
    its forward and wherever its invisible keys lie (``common.models.modeling.invariant``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        layer_range: tuple[int, int],
        *,
        with_embedding: bool,
        with_head: bool,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        row_invariant: bool = True,
    ) -> None:
        super().__init__()
        first, last = layer_range
        if not 0 <= first <= last <= spec.num_layers:
            raise ValueError(f"layer range [{first}, {last}) is not part of [0, {spec.num_layers})")
        if first == last and not (with_embedding or with_head):
            raise ValueError(f"slice [{first}, {last}) holds no layer, embedding or head")
        self._spec = spec
        self._layer_range = (first, last)
        self._row_invariant = row_invariant
        # Build on the meta device, then allocate without initialising: random init of a
        # large slice would cost time and the loader overwrites every value anyway.
        with torch.device("meta"):
            self.embed_tokens = (
                nn.Embedding(spec.vocab_size, spec.hidden_size, dtype=dtype) if with_embedding else None
            )
            self.layers = nn.ModuleList(
                DecoderLayer(spec, dtype=dtype, row_invariant=row_invariant) for _ in range(last - first)
            )
            self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype=dtype) if with_head else None
            self.lm_head = (
                nn.Linear(spec.hidden_size, spec.vocab_size, bias=False, dtype=dtype) if with_head else None
            )
        self.to_empty(device=device)
        # Tie only now: `to_empty` would give each user of a shared meta parameter its own storage.
        if self.lm_head is not None and self.embed_tokens is not None and spec.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.requires_grad_(False)
        # A plain attribute, not a buffer: `Module.to(dtype)` would otherwise round it to half precision.
        self._inv_freq = rope_inv_freq(spec, device=device)  # [D/2] float32
        # Filled by the loader: checkpoint tensor names read to build this slice.
        self.loaded_tensor_names: tuple[str, ...] = ()

    @property
    def row_invariant(self) -> bool:
        """Whether every row is computed bitwise as it would be alone (else fused kernels)."""
        return self._row_invariant

    def use_row_invariant(self, flag: bool) -> None:
        """Switch the numerics of every layer and the head: row-invariant (True) or fused kernels."""
        self._row_invariant = flag
        for layer in cast(Iterable[DecoderLayer], self.layers):  # a ModuleList yields plain Modules to mypy
            layer.self_attn.row_invariant = flag
            layer.mlp.row_invariant = flag

    @property
    def spec(self) -> ModelSpec:
        """Architecture of the whole model."""
        return self._spec

    @property
    def layer_range(self) -> tuple[int, int]:
        """Model layers ``[first, last)`` held by this slice."""
        return self._layer_range

    @property
    def with_embedding(self) -> bool:
        """Whether ``forward`` takes token ids (True) or hidden states (False)."""
        return self.embed_tokens is not None

    @property
    def with_head(self) -> bool:
        """Whether ``logits`` is available."""
        return self.lm_head is not None

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the slice."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device holding the parameters."""
        return next(self.parameters()).device

    @property
    def num_parameters(self) -> int:
        """Number of parameter elements, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, initial_capacity: int = 256) -> KVCache:
        """An empty cache sized for this slice's layers, dtype and device."""
        return KVCache(
            len(self.layers),
            self._spec.num_kv_heads,
            self._spec.head_dim,
            dtype=self.dtype,
            device=self.device,
            initial_capacity=initial_capacity,
        )

    @torch.no_grad()
    def forward(self, inputs: Tensor, positions: Tensor, attend: Tensor | None, cache: KVCache) -> Tensor:
        """Run ``L`` new rows through the slice's layers, appending their keys/values to ``cache``.

        ``inputs``: token ids ``[L]`` with the embedding, else hidden states ``[L, H]``;
        ``positions``: RoPE positions ``[L]``; ``attend``: bool ``[L, cache.length + L]``, True
        where a row may attend to a key (cache rows first, then the new rows in order); every
        row must attend to at least one key. ``None`` (one row only): the row sees every key.
        Returns hidden states ``[L, H]`` before the final norm.
        """
        x = self.embed(inputs)  # [L, H]
        attend = self.check_rows(x.shape[0], positions, attend, cache)
        cos, sin = self.rope(positions)  # [L, D] each
        try:
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, attend, cache, i)
        except BaseException:
            cache.rollback()
            raise
        cache.advance(x.shape[0])
        return x

    def check_rows(self, n: int, positions: Tensor, attend: Tensor | None, cache: KVCache) -> Tensor | None:
        """Check the arguments of a forward of ``n`` rows (see :meth:`forward`); ``attend`` on the device."""
        if positions.shape != (n,):
            raise ValueError(f"positions must be [{n}], got {tuple(positions.shape)}")
        total = cache.length + n
        if attend is not None and (attend.shape != (n, total) or attend.dtype != torch.bool):
            raise ValueError(
                f"attend must be a bool [{n}, {total}] mask, got {attend.dtype} {tuple(attend.shape)}"
            )
        if attend is None and n != 1:
            raise ValueError(f"attend may be omitted only for a single row, not {n}")
        if cache.num_layers != len(self.layers):
            raise ValueError(f"cache has {cache.num_layers} layers, slice has {len(self.layers)}")
        return None if attend is None else attend.to(self.device)

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE cosines and sines ``[L, D]`` in the compute dtype for ``positions`` ``[L]``."""
        if self._inv_freq.device != self.device:
            self._inv_freq = self._inv_freq.to(self.device)
        freqs = positions.to(self.device, torch.float32)[:, None] * self._inv_freq[None, :]  # [L, D/2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [L, D]
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    @torch.no_grad()
    def greedy_tokens(self, hidden: Tensor) -> Tensor:
        """Argmax token ids ``[L]`` of the head, in the compute dtype: no float32 vocabulary rows.

        Casting to float32 is exact, so this is the argmax of :meth:`logits`, ties included.
        """
        if self.lm_head is None or self.norm is None:
            raise RuntimeError(f"slice {self._layer_range} was built without the head")
        return self._head(hidden).argmax(dim=-1)

    @torch.no_grad()
    def logits(self, hidden: Tensor) -> Tensor:
        """Float32 logits ``[L, vocab]`` of the final norm and head applied to ``hidden`` ``[L, H]``."""
        if self.lm_head is None or self.norm is None:
            raise RuntimeError(f"slice {self._layer_range} was built without the head")
        return self._head(hidden).float()

    def _head(self, hidden: Tensor) -> Tensor:
        assert self.norm is not None and self.lm_head is not None, "callers check with_head"
        normed = self.norm(hidden.to(self.device, self.dtype))
        return invariant.linear(self.lm_head, normed) if self._row_invariant else self.lm_head(normed)

    def embed(self, inputs: Tensor) -> Tensor:
        """Rows ``[L, H]`` in the compute dtype: token ids embedded, or hidden states converted."""
        if self.embed_tokens is not None:
            if inputs.dim() != 1 or inputs.dtype != torch.long:
                raise ValueError(f"expected int64 token ids [L], got {inputs.dtype} {tuple(inputs.shape)}")
            x = self.embed_tokens(inputs.to(self.device))
        else:
            if inputs.dim() != 2 or inputs.shape[1] != self._spec.hidden_size:
                raise ValueError(
                    f"expected hidden states [L, {self._spec.hidden_size}], got {tuple(inputs.shape)}"
                )
            # Neighbouring slices may run another dtype or device; convert at the boundary.
            x = inputs.to(self.device, self.dtype)
        if x.shape[0] == 0:
            raise ValueError("forward needs at least one row")
        return x


def _apply(layer: nn.Linear, x: Tensor) -> Tensor:
    return layer(x)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
