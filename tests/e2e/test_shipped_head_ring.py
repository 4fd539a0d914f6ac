"""The head shipped for qwen-coder-1.5b drafts in the process ring, and the output is the base's own greedy output.

Needs the real base (`flowring models pull qwen-coder`, which `make test` does not pull): marked slow.
"""

from __future__ import annotations

import pytest

from common.models.errors import ModelNotPulledError
from common.models.modeling.tokenizer import encode_prompt, load_tokenizer
from common.models.store import resolve
from common.speculation.heads.shipped import SHIPPED_DIR, head_for_base
from common.speculation.modes import DraftSettings
from services.launcher import client_for, plan_local, start, stop
from tests.support.reference import greedy_reference

pytestmark = [pytest.mark.slow, pytest.mark.real]

PROMPTS = ["Write a Python function that reverses a list.", "Explain what a hash map is in one sentence."]


@pytest.fixture(scope="module")
def base():
    try:
        return resolve("qwen-coder-1.5b")
    except ModelNotPulledError:
        pytest.skip("qwen-coder is not pulled (flowring models pull qwen-coder)")


def test_the_shipped_head_fits_its_base_and_is_greedy_lossless_in_the_ring(base, tmp_path):
    head = head_for_base(base)
    assert head == SHIPPED_DIR / "qwen-coder-1.5b"
    tokenizer = load_tokenizer(base)
    spec = plan_local(base, None, 2, draft_head=head, threads=1, dtype="float32",
                      draft_settings=DraftSettings(top_k=3, fill_nodes=12, fill_depth=4, expand_nodes=8))
    start(spec, tmp_path / "run")
    try:
        with client_for(spec, 600) as client:
            for text in PROMPTS:
                for mode in ("flowspec", "chunk"):
                    reply = client.generate(text, max_new_tokens=16, mode=mode)
                    assert reply.ok, reply.error
                    ids = encode_prompt(tokenizer, text, raw=False)
                    assert list(reply.token_ids) == greedy_reference(base, ids, 16), (mode, text)
                    assert reply.stats["accepted_per_step"] > 0  # the head's drafts get accepted
    finally:
        stop(tmp_path / "run")
