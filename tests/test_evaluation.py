"""Perplexity from per-record NLLs, and its patient-cluster bootstrap interval (prunepriv.lm.evaluation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_model

from prunepriv.lm.evaluation import (
    RecordScores,
    perplexity,
    perplexity_interval,
    score_records,
)

TEXTS = ["Patient admitted with chest pain.", "Discharged home on aspirin.", "Follow-up in two weeks.",
         "No known allergies.", "Blood pressure 130/85.", "Seen by the cardiology team today."]


def test_per_record_scores_give_the_perplexity(byte_tokenizer):
    model = tiny_model("llama", layers=2)
    scores = score_records(model, byte_tokenizer, TEXTS, max_length=24, batch_size=4)
    assert scores.perplexity == perplexity(model, byte_tokenizer, TEXTS, max_length=24, batch_size=4)
    assert len(scores.nll) == len(TEXTS) and (scores.tokens > 0).all() and scores.tokens.max() == 23
    assert math.exp(scores.nll.sum() / scores.tokens.sum()) == pytest.approx(scores.perplexity, rel=1e-6)


def test_cluster_bootstrap_interval():
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 60, size=40).astype(float)
    scores = RecordScores(tokens * rng.uniform(1.5, 3.0, size=40), tokens, 0.0)
    scores.perplexity = math.exp(scores.nll.sum() / scores.tokens.sum())
    per_record = perplexity_interval(scores, [str(i) for i in range(40)], seed=1)
    assert per_record[0] < scores.perplexity < per_record[1]
    assert per_record == perplexity_interval(scores, [str(i) for i in range(40)], seed=1)      # seeded
    # two notes per patient: resampling patients is resampling pairs, never splitting one
    paired = perplexity_interval(scores, [str(i // 2) for i in range(40)], seed=1)
    assert paired[0] < scores.perplexity < paired[1] and paired != per_record
    one = perplexity_interval(scores, ["same"] * 40, seed=1)          # one cluster: nothing to resample
    assert one == pytest.approx((scores.perplexity, scores.perplexity))
    with pytest.raises(ValueError, match="3 cluster labels for 40 records"):
        perplexity_interval(scores, ["a", "b", "c"])
