"""End to end on a real model: SmolLM2-135M-Instruct (pulled by `make test`) through the process ring.

SmolLM2 has no smaller packaged partner, so it drafts for itself: this proves losslessness and the
accept/prune/expand path on real weights, not speed.
"""

from __future__ import annotations

import os
import re

import pytest

from common.models.errors import ModelNotPulledError
from common.models.modeling.tokenizer import encode_prompt, load_tokenizer
from common.models.store import resolve
from common.speculation.modes import DraftSettings
from services.launcher import client_for, plan_local, start, stop
from tests.support.reference import greedy_reference

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three primary colors.",
]


@pytest.fixture(scope="module")
def smollm2():
    try:
        return resolve("smollm2-135m")
    except ModelNotPulledError:
        if os.environ.get("FLOWRING_SKIP_REAL") == "1":
            pytest.skip("FLOWRING_SKIP_REAL=1 and smollm2 is not pulled")
        raise


def test_smollm2_ring_matches_generate_and_reads_well(smollm2, tmp_path):
    tokenizer = load_tokenizer(smollm2)
    settings = DraftSettings(top_k=3, fill_nodes=16, fill_depth=6, segment_cap=8, expand_nodes=8, expand_depth=4)
    spec = plan_local(smollm2, smollm2, 2, draft_settings=settings, threads=1)
    start(spec, tmp_path / "run")
    try:
        with client_for(spec, 300) as client:
            for text in PROMPTS:
                reply = client.generate(text, max_new_tokens=24)
                assert reply.ok, reply.error
                ids = encode_prompt(tokenizer, text, raw=False)
                assert list(reply.token_ids) == greedy_reference(smollm2, ids, 24)
                assert len(re.findall(r"[A-Za-z]{3,}", reply.text)) >= 3, reply.text
                assert reply.stats["tokens_per_step"] > 1.0  # it drafts for itself: paths get accepted
    finally:
        stop(tmp_path / "run")
