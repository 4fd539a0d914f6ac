"""The shipped form of a head: int8 with a scale per row, in shards with their sha256, refused for another base,
small enough for the repository at the default base's sizes, and greedy-lossless in the ring."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from common.models.modeling import ModelSpec
from common.speculation.heads import load_head
from common.speculation.heads.config import HeadConfig, HeadMismatchError, base_fingerprint
from common.speculation.heads.model import DraftHead, new_head, save_head
from common.speculation.heads.packing import INT8_ROWS, MAX_SHARD_BYTES, encode, quantize_rows, write_shards
from common.speculation.modes import DraftSettings
from tests.support.local_ring import LocalRing
from tests.support.reference import greedy_reference
from tests.support.tiny_models import make_tiny_model

TREES = DraftSettings(top_k=3, fill_nodes=10, fill_depth=4, segment_cap=4, expand_nodes=6, expand_depth=3)


def test_int8_rows_stay_within_half_a_step_of_each_row() -> None:
    w = torch.randn(40, 96) * torch.logspace(-3, 1, 40)[:, None]  # rows of very different scales
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (40,)
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-9).all()
    assert (q.abs().amax(dim=1) == 127).all()  # every row uses its whole range


def test_a_shipped_head_loads_drafts_as_the_float_one_and_is_refused_for_another_base(tiny_base: Path,
                                                                                       tmp_path: Path) -> None:
    head = new_head(tiny_base, intermediate_size=48, draft_ids=torch.arange(3, 200), dtype=torch.float32, seed=5)
    save_head(head, tmp_path / "h", weights=INT8_ROWS)
    body = json.loads((tmp_path / "h" / "config.json").read_text())
    assert body["weights"] == INT8_ROWS and sorted(body["weight_files"]) == ["head-00001-of-00001.safetensors"]
    shipped = load_head(tmp_path / "h", tiny_base, dtype=torch.float32)
    assert torch.equal(shipped.draft_ids, head.draft_ids)
    for name, t in head.trainable_state().items():
        if t.dim() == 2:
            err = (shipped.trainable_state()[name] - t).abs().max() / t.abs().max()
            assert err <= 0.5 / 127 + 1e-6, name
    features, tokens = torch.randn(12, head.spec.hidden_size), torch.randint(3, 200, (12,))
    attend = torch.ones(12, 12, dtype=torch.bool).tril()
    a = head.logits(head(features, tokens, torch.arange(12), attend, head.new_cache())).argmax(-1)
    b = shipped.logits(shipped(features, tokens, torch.arange(12), attend, shipped.new_cache())).argmax(-1)
    assert (a == b).float().mean() >= 0.9  # int8 rows change a few near-ties at most
    other = make_tiny_model(tmp_path / "other", num_layers=2, hidden=64, seed=8)
    with pytest.raises(HeadMismatchError, match="embedding matrices differ"):
        load_head(tmp_path / "h", other, dtype=torch.float32)


def test_a_corrupt_or_missing_shard_is_refused(head: DraftHead, tmp_path: Path, tiny_base: Path) -> None:
    save_head(head, tmp_path / "h", weights=INT8_ROWS)
    config = HeadConfig.read(tmp_path / "h")
    shard = tmp_path / "h" / config.weight_files[0][0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(HeadMismatchError, match="corrupt"):
        load_head(tmp_path / "h", tiny_base, dtype=torch.float32)
    shard.unlink()
    with pytest.raises(HeadMismatchError, match="config names"):
        load_head(tmp_path / "h", tiny_base, dtype=torch.float32)


def test_shards_split_at_the_byte_limit_and_load_back(head: DraftHead, tmp_path: Path, tiny_base: Path) -> None:
    tensors = encode(head.trainable_state(), INT8_ROWS)
    files = write_shards(tensors, tmp_path, max_bytes=8_000)
    assert len(files) > 2 and all((tmp_path / f).stat().st_size <= 8_000 + 2_000 for f in files)
    save_head(head, tmp_path / "h", weights="float32")
    plain = load_head(tmp_path / "h", tiny_base, dtype=torch.float32)
    assert all(torch.equal(plain.trainable_state()[k], v) for k, v in head.trainable_state().items())


def test_the_default_bases_head_fits_the_repository() -> None:
    """qwen-coder-1.5b's sizes (hidden 1536, 12 heads of 128, 2 KV heads), the trained MLP width (a quarter
    of 8960) and a 32,768-token draft vocabulary: at most 20 MiB in all, every shard under 16 MiB."""
    spec = ModelSpec(family="qwen2", vocab_size=32_768, hidden_size=1536, intermediate_size=8960, num_layers=28,
                     num_heads=12, num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                     rope_scaling=None, tie_word_embeddings=True, qkv_bias=True, o_bias=False, mlp_bias=False,
                     eos_token_ids=(2,), bos_token_id=None, max_position_embeddings=32768, torch_dtype="bfloat16")
    embedding = torch.zeros(spec.vocab_size, spec.hidden_size, dtype=torch.bfloat16)
    config = HeadConfig(base_fingerprint(spec, embedding), 8960 // 4, spec.vocab_size)
    head = DraftHead(config, spec, embedding, embedding, draft_ids=torch.arange(spec.vocab_size),
                     dtype=torch.bfloat16)
    tensors = encode(head.trainable_state(), INT8_ROWS)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    assert total <= 20 * 2**20
    assert max(t.numel() * t.element_size() for t in tensors.values()) <= MAX_SHARD_BYTES <= 16 * 2**20
    assert sum(t.numel() * t.element_size() for t in encode(head.trainable_state(), "bfloat16").values()) > 38 * 2**20


@pytest.fixture(scope="module")
def ring_base_and_shipped_head(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shipped-ring")
    base = make_tiny_model(root / "base", family="qwen2", num_layers=4, seed=6)
    head = new_head(base, intermediate_size=48, draft_ids=None, dtype=torch.float32, seed=2)
    save_head(head, root / "head", weights=INT8_ROWS)
    return base, root / "head"


@pytest.mark.parametrize("mode", ["chunk", "flowspec"])
def test_the_shipped_format_is_greedy_lossless_in_the_ring(ring_base_and_shipped_head, mode) -> None:
    base, head = ring_base_and_shipped_head
    ring = LocalRing(base, None, 2, settings=TREES, interleave_seed=4, draft_head=head)
    rng = random.Random(17)
    for _ in range(3):
        prompt = [rng.randrange(3, 300) for _ in range(rng.randrange(2, 40))]
        reply = ring.generate(prompt, max_new_tokens=16, mode=mode)
        assert reply.ok, reply.error
        assert list(reply.token_ids) == greedy_reference(base, prompt, 16)
        assert reply.stats["services"]["verifier"]["rows"] > reply.stats["steps"]  # the head's drafts were verified
