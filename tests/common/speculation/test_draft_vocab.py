"""The reduced draft vocabulary: which ids are chosen, counted over the offline corpus, and the cut lm_head."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from common.models.modeling import load_slice
from common.models.modeling.tokenizer import load_tokenizer
from common.speculation.draft_vocab import DraftLogits, draft_vocabulary, most_frequent_ids
from common.speculation.heads.corpus import source_texts
from tests.support.tiny_models import BOS_ID, EOS_ID, UNK_ID, make_tiny_model


@pytest.mark.parametrize(
    ("counts", "size", "always", "expected"),
    [
        ({7: 5, 3: 9, 9: 1}, 2, (), [3, 7]),  # the most frequent, ascending
        ({7: 5, 3: 9, 9: 1}, 3, (8,), [3, 7, 8]),  # `always` first, then by frequency
        ({7: 5}, 3, (), [0, 1, 7]),  # fewer counted than asked: the lowest unseen ids pad
        ({7: 5, 12: 9}, 2, (), [0, 7]),  # ids beyond the vocabulary (here 10) never count
    ],
)
def test_most_frequent_ids(counts, size, always, expected) -> None:
    assert most_frequent_ids(Counter(counts), size, 10, always).tolist() == expected


def test_the_full_vocabulary_needs_no_ids() -> None:
    assert most_frequent_ids(Counter({1: 1}), 0, 10) is None
    assert most_frequent_ids(Counter({1: 1}), 10, 10) is None


def test_a_draft_models_vocabulary_is_counted_once_and_saved_beside_it(tmp_path, monkeypatch) -> None:
    model_dir = make_tiny_model(tmp_path / "draft", vocab=320)
    ids = draft_vocabulary(model_dir, 64, corpus_chars=20_000)
    assert len(ids) == 64 and ids.tolist() == sorted(set(ids.tolist()))
    assert {UNK_ID, BOS_ID, EOS_ID} <= set(ids.tolist())  # special tokens (an answer's end) always stay
    tokenizer = load_tokenizer(model_dir)
    counts = Counter(t for text in source_texts(20_000) for t in tokenizer(text)["input_ids"])
    assert {t for t, _ in counts.most_common(10)} <= set(ids.tolist())
    assert (model_dir / "draft_vocab_64.pt").is_file()
    monkeypatch.setattr("common.speculation.heads.corpus.source_texts", lambda *a, **k: pytest.fail("counted again"))
    assert torch.equal(draft_vocabulary(model_dir, 64), ids)
    assert draft_vocabulary(model_dir, 0) is None


def test_reduced_logits_are_the_full_logits_at_the_chosen_rows(tmp_path) -> None:
    model = load_slice(make_tiny_model(tmp_path / "m", tie=True), None, with_embedding=True, with_head=True,
                       dtype=torch.float32)
    draft_ids = torch.tensor([2, 5, 40, 300])
    hidden = torch.randn(3, model.spec.hidden_size, generator=torch.Generator().manual_seed(0))
    reduced = DraftLogits(model, draft_ids)
    torch.testing.assert_close(reduced(hidden), model.logits(hidden)[:, draft_ids])
    assert reduced.token_ids(torch.tensor([[3, 0]])) == [[300, 2]]
    assert DraftLogits(model).token_ids(torch.tensor([[3, 0]])) == [[3, 0]]
