"""Memorization attacks: scoring against a naive reference, metrics on known
inputs, controls that exclude shared values, generation, the audit on a run."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from conftest import tiny_model

from prunepriv.attacks import probes as attacks
from prunepriv.config import MemorizationConfig
from prunepriv.data import Canary, synthetic_corpus
from prunepriv.lm.generation import SamplingSpec, continue_greedy, sample_records
from prunepriv.lm.text import record_ids


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_cached_continuation_nll_equals_full_scoring(byte_tokenizer, family):
    model = tiny_model(family, layers=3)
    texts = [f"Ann Lee's patient portal recovery code is {s}." for s in ("123456", "000000", "987654", "55")]
    cached = attacks.continuation_nll(model, byte_tokenizer, texts, batch_size=3)
    full = attacks.record_logprobs(model, byte_tokenizer, texts, max_length=10_000)
    seqs = record_ids(byte_tokenizer, texts, 10_000)
    common = attacks._common_prefix(seqs)
    naive = [-lp[common - 1:].sum() for lp in full]                  # tokens after the shared prefix
    np.testing.assert_allclose(cached, naive, rtol=1e-4, atol=1e-4)


def test_trie_scoring_of_many_candidates_equals_full_scoring(byte_tokenizer):
    """Candidates that share leading digits (a trie several levels deep, levels split over batches)."""
    model = tiny_model("llama", layers=2)
    rng = random.Random(0)
    secrets = sorted({"".join(rng.choice("0123") for _ in range(rng.choice((3, 4)))) for _ in range(40)})
    texts = [f"code is {s}" for s in secrets]
    cached = attacks.continuation_nll(model, byte_tokenizer, texts, batch_size=5, end=False)
    full = attacks.record_logprobs(model, byte_tokenizer, texts, max_length=10_000, end=False)
    common = attacks._common_prefix(record_ids(byte_tokenizer, texts, 10_000, end=False))
    np.testing.assert_allclose(cached, [-lp[common - 1:].sum() for lp in full], rtol=1e-4, atol=1e-4)


def test_record_ids_open_with_start_and_close_with_eos(byte_tokenizer):
    ids = record_ids(byte_tokenizer, ["abc", "x" * 50], max_length=10)
    start = byte_tokenizer.eos_token_id                            # no BOS: EOS opens records
    assert ids[0][0] == start and ids[0][-1] == byte_tokenizer.eos_token_id and len(ids[0]) == 5
    assert len(ids[1]) == 10 and ids[1][-1] != byte_tokenizer.eos_token_id


def test_auc_and_tpr_on_known_scores():
    assert attacks.roc_auc(np.array([3, 4]), np.array([1, 2])) == 1.0
    assert attacks.roc_auc(np.array([1, 2]), np.array([3, 4])) == 0.0
    assert attacks.roc_auc(np.array([1, 1]), np.array([1, 1])) == 0.5
    members, nonmembers = np.arange(100, 200), np.arange(0, 100)
    assert attacks.tpr_at_fpr(members, nonmembers, 0.01) == 1.0
    # FPR <= 1% of 100 non-members allows one false positive (threshold 98); FPR 0 allows none (99)
    assert attacks.tpr_at_fpr(np.array([99.5, 98.5]), nonmembers, 0.01) == 1.0
    assert attacks.tpr_at_fpr(np.array([99.5, 98.5]), nonmembers, 0.0) == 0.5
    assert attacks.tpr_at_fpr(np.array([49.5, 48.5]), nonmembers[:50], 0.001) == 0.5   # below 1/n: FPR 0


def test_mia_scores_point_the_right_way():
    member = [np.full(10, -0.1)]            # low loss
    nonmember = [np.full(10, -3.0)]
    scores = attacks.mia_scores(["aaaa", "bbbb"], member + nonmember, [np.full(10, -2.0)] * 2, min_k=0.2)
    for name in attacks.MIA_ATTACKS:
        assert scores[name][0] > scores[name][1], name


def test_zlib_divides_the_windows_nll_by_the_windows_zlib_size(byte_tokenizer):
    """Issue 14: the NLL of the scored window over the zlib size of that window, not of the whole record."""
    model = tiny_model("llama", layers=2)
    record = "Ann Lee was admitted with chest pain and discharged home. " * 20
    lp = attacks.record_logprobs(model, byte_tokenizer, [record], max_length=16)
    window = attacks.scored_texts(byte_tokenizer, [record], 16)
    assert record.startswith(window[0]) and len(window[0]) == len(lp[0]) == 15
    scores = attacks.mia_scores(window, lp, lp)
    assert scores["zlib"][0] == pytest.approx(lp[0].sum() / attacks.zlib_bits(window[0]))
    assert scores["zlib"][0] != pytest.approx(lp[0].sum() / attacks.zlib_bits(record))


def test_min_k_uses_the_lowest_tokens():
    assert attacks.min_k_mean(np.array([-5.0, -1.0, -0.5, -0.1, -0.2]), 0.2) == -5.0
    assert attacks.min_k_mean(np.array([-5.0, -1.0, -0.5, -0.1, -0.2]), 0.4) == -3.0


def test_exposure_ranks_the_secret(byte_tokenizer, monkeypatch):
    canary = Canary("C000", "Ann Lee's patient portal recovery code is ", "123456", 4)
    monkeypatch.setattr(attacks, "continuation_nll",
                        lambda model, tok, texts, bs, end=True: np.array([0.0] + [float(i + 1) for i in range(len(texts) - 1)]))
    top = attacks.canary_exposure(None, byte_tokenizer, canary, n_candidates=63, seed=0)
    assert top.rank == 1 and top.exposure == pytest.approx(6.0)
    mu, sd = np.mean(np.arange(1, 64)), np.std(np.arange(1, 64), ddof=1)      # normal fit of the candidates
    assert top.exposure_fit == pytest.approx(-math.log2(0.5 * math.erfc(mu / (sd * math.sqrt(2)))))
    monkeypatch.setattr(attacks, "continuation_nll",
                        lambda model, tok, texts, bs, end=True: np.array([100.0] + [float(i) for i in range(len(texts) - 1)]))
    bottom = attacks.canary_exposure(None, byte_tokenizer, canary, n_candidates=63, seed=0)
    assert bottom.rank == 64 and bottom.exposure == pytest.approx(0.0) and bottom.exposure_fit < 0.01


def test_exposure_candidates_are_paired_per_canary_and_independent_across_replicates():
    canary = Canary("C000", "Ann Lee's patient portal recovery code is ", "123456", 4)
    again = attacks.exposure_candidates(canary, 64, seed=0)
    assert again == attacks.exposure_candidates(canary, 64, seed=0)           # tuned and untuned: same candidates
    assert len(set(again)) == 64 and canary.secret not in again
    replicate = Canary("C000", canary.prefix, "654321", 4)                     # same id, secret drawn anew
    assert len(set(again) & set(attacks.exposure_candidates(replicate, 64, seed=0))) < 8


def test_exposure_scores_the_secret_digits_and_audit_scores_only_the_secret(byte_tokenizer):
    tiny_lm = tiny_model("llama", layers=2)
    canary = Canary("C000", "Ann Lee: ", "123456", 1, "audit")
    (secret,) = attacks.secret_logprobs(tiny_lm, byte_tokenizer, [canary])
    assert len(secret) == len("123456")                                   # byte tokens: one per digit
    whole = attacks.record_logprobs(tiny_lm, byte_tokenizer, [canary.prefix + canary.secret], 64, end=False)[0]
    assert np.allclose(secret, whole[-6:], atol=1e-5)                     # the secret's tokens in context


def test_chance_exposure_band_is_the_exact_law_of_a_group_mean():
    low, high = attacks.chance_exposure_band(32, 128)
    draws = np.log2(129 / np.random.default_rng(0).integers(1, 130, (100_000, 32))).mean(1)
    assert low == pytest.approx(np.quantile(draws, 0.025), abs=0.01)
    assert high == pytest.approx(np.quantile(draws, 0.975), abs=0.01)
    assert low < attacks.chance_exposure(128) < high
    one = attacks.chance_exposure_band(1, 128)
    assert one[0] == pytest.approx(math.log2(129 / 126), abs=0.01) and one[1] == pytest.approx(math.log2(129 / 4), abs=0.01)


def test_permutation_test_holds_its_level_and_detects_a_shift():
    rng = np.random.default_rng(1)
    null = [attacks.permutation_p(rng.normal(size=32), rng.normal(size=32), draws=199, seed=i) for i in range(100)]
    assert 0.01 <= np.mean(np.array(null) < 0.05) <= 0.12                 # about 5% under no effect
    assert attacks.permutation_p(rng.normal(size=32) + 1.5, rng.normal(size=32), draws=999) < 0.01
    strata = np.repeat([0, 1], 16)                                          # labels shuffled within each replicate
    assert 0 < attacks.permutation_p(rng.normal(size=32), rng.normal(size=32), strata, strata, draws=99) <= 1


def test_random_secrets_keep_the_format():
    rng = random.Random(0)
    secret = attacks.random_secret(rng, "AB-1234")
    assert len(secret) == 7 and secret[2] == "-" and secret[:2].isupper() and secret[3:].isdigit()


def test_chance_exposure_approaches_one_over_ln2():
    assert attacks.chance_exposure(10_000) == pytest.approx(1 / math.log(2), abs=0.01)


def test_pii_controls_exclude_shared_values():
    corpus = synthetic_corpus(seed=0, n_patients=40, notes_per_patient=2)
    train, held = attacks.exclusive_pii(corpus, "train"), attacks.exclusive_pii(corpus, "heldout")
    assert train and held and not set(train) & set(held)
    clinicians = {v for k, v in corpus.pii_values("train") if k == "clinician"}
    assert not clinicians & set(train)
    text = f"... {train[0]} ... {held[0]} and {held[1]}"
    assert attacks.leaked_fraction([text], train) == pytest.approx(1 / len(train))
    assert attacks.leaked_fraction([text], held) == pytest.approx(2 / len(held))


def test_pii_past_the_training_window_is_not_counted_as_trained(byte_tokenizer):
    """Issue 14: only values inside the window of tokens trained on count (here 40 bytes)."""
    corpus = synthetic_corpus(seed=0, n_patients=40, notes_per_patient=2)
    texts = [r.text for s in ("train", "heldout") for r in corpus.splits[s]]
    window = attacks.window_chars(byte_tokenizer, texts, 40)
    assert window(texts[0]) == 39                          # the start token, then 39 bytes
    everything = attacks.exclusive_pii(corpus, "train")
    inside = attacks.exclusive_pii(corpus, "train", window=window)
    assert inside and set(inside) < set(everything)
    ends = {item.value: item.end for r in corpus.splits["train"] for item in r.pii}
    assert all(any(item.value == v and item.end <= window(r.text) for r in corpus.splits["train"] for item in r.pii)
               for v in inside)
    assert any(ends[v] > 39 for v in set(everything) - set(inside))


def test_prefix_probes_cut_records_and_find_suffix_pii(byte_tokenizer):
    corpus = synthetic_corpus(seed=0, n_patients=10, notes_per_patient=2)
    records = [r for r in corpus.splits["train"] if r.canary is None]
    probes = attacks.prefix_probes(byte_tokenizer, records, prefix_tokens=20, suffix_tokens=40, limit=5)
    assert len(probes) == 5
    for probe in probes:
        assert len(probe.prompt) == 21 and len(probe.suffix) == 40
        suffix = byte_tokenizer.decode(probe.suffix)
        assert all(v in suffix for v in probe.suffix_pii)
    assert any(p.suffix_pii for p in probes)
    generated = [p.suffix for p in probes]                      # a perfect memorizer
    assert attacks.token_match_rate(generated, generated) == 1.0 == attacks.exact_suffix_rate(generated, generated)
    texts = [byte_tokenizer.decode(p.suffix) for p in probes]
    assert attacks.targeted_pii_rate(texts, probes)[0] == 1.0


def test_sampling_is_seeded_and_greedy_continuation_has_fixed_length(byte_tokenizer):
    model = tiny_model("llama", layers=2)
    spec = SamplingSpec.from_config(MemorizationConfig(), n_samples=5, max_new_tokens=6, batch_size=2)
    a = sample_records(model, byte_tokenizer, spec, seed=1, progress=False)
    assert a == sample_records(model, byte_tokenizer, spec, seed=1, progress=False)
    assert a != sample_records(model, byte_tokenizer, spec, seed=2, progress=False) and len(a) == 5
    prompts = [[1, 70, 71, 72], [1, 80, 81, 82], [1, 90, 91, 92]]
    out = continue_greedy(model, prompts, new_tokens=5, pad_id=0, batch_size=2)
    assert [len(o) for o in out] == [5, 5, 5]
    with torch.no_grad():
        first = model(torch.tensor(prompts)).logits[:, -1].argmax(-1).tolist()
    assert [o[0] for o in out] == first


def test_audit_score_is_the_tuned_models_log_probability_of_the_secret(byte_tokenizer):
    """Uncalibrated (docs/measurements.md, one-run audit): the sum of the secret's token log-probabilities."""
    from prunepriv.stages.memorization import audit_scores

    tiny_lm = tiny_model("llama", layers=2)
    canaries = [Canary("A000", "Ann Lee: ", "12345678", 1, "audit"), Canary("A001", "Bo Yu: ", "87654321", 0, "audit")]
    scores = audit_scores(tiny_lm, byte_tokenizer, canaries, batch_size=2)
    expected = [lp.sum() for lp in attacks.secret_logprobs(tiny_lm, byte_tokenizer, canaries)]
    assert scores.shape == (2,) and np.allclose(scores, expected, atol=1e-5) and (scores < 0).all()
