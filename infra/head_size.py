"""Stored size of a draft head at qwen-coder-1.5b's sizes (MLP width 2240, 32,768-token draft vocabulary) per format:
`PYTHONPATH=. .venv/bin/python infra/head_size.py`."""
import tempfile
from pathlib import Path

import torch

from common.models.modeling import ModelSpec
from common.speculation.heads.config import HeadConfig, base_fingerprint
from common.speculation.heads.model import DraftHead
from common.speculation.heads.packing import encode, write_shards

spec = ModelSpec(family="qwen2", vocab_size=32_768, hidden_size=1536, intermediate_size=8960, num_layers=28,
                 num_heads=12, num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling=None,
                 tie_word_embeddings=True, qkv_bias=True, o_bias=False, mlp_bias=False, eos_token_ids=(2,),
                 bos_token_id=None, max_position_embeddings=32768, torch_dtype="bfloat16")
emb = torch.zeros(spec.vocab_size, spec.hidden_size, dtype=torch.bfloat16)
head = DraftHead(HeadConfig(base_fingerprint(spec, emb), 2240, spec.vocab_size), spec, emb, emb,
                 draft_ids=torch.arange(spec.vocab_size), dtype=torch.float32)
for weights in ("int8-rows", "bfloat16"):
    with tempfile.TemporaryDirectory() as d:
        files = write_shards(encode(head.trainable_state(), weights), Path(d))
        sizes = [(Path(d) / f).stat().st_size for f in files]
        print(f"{weights}: {sum(sizes) / 2**20:.2f} MiB in {len(sizes)} files, largest {max(sizes) / 2**20:.2f} MiB")
