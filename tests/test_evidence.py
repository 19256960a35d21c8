"""The evidence machinery of issues 28 and 29: schedules, replicated settings, matched membership sides,
timing checks, audit verdicts, and the spreads that make `prunepriv verify` a statistical test."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import prunepriv
from prunepriv.config import ConfigError
from prunepriv.data import Record
from prunepriv.privacy.specs import TrainSpec, finetune_specs, learning_rate_at, nonprivate_train
from prunepriv.report import claims
from prunepriv.report.seeds import collapse_replicates, recovered_share
from prunepriv.stages.experiments import timing_check
from prunepriv.stages.memorization import audit_verdict, kind_matched, with_control


def test_warm_up_then_linear_decay_and_the_old_constant_schedule():
    spec = TrainSpec(1.0, 0.01, 8, 4, 16, 10, 0, "seeded", warmup=0.1)
    rates = [learning_rate_at(spec, step, 20) for step in range(20)]
    assert rates[0] == pytest.approx(0.01 / 3) and rates[1] == pytest.approx(0.02 / 3)   # two warm-up steps
    assert rates[2] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.01 / 18)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))
    constant = TrainSpec(1.0, 0.01, 8, 4, 16, 10, 0, "seeded")
    assert {learning_rate_at(constant, s, 20) for s in range(20)} == {0.01}


def test_nonprivate_runs_have_their_own_optimisation_and_settings_their_own_seed_count():
    profile = prunepriv.load_profile("paper")
    _, _, train = finetune_specs(profile)
    mine = nonprivate_train(profile, train)
    n = profile.finetune.nonprivate
    assert (mine.learning_rate, mine.batch_size, mine.epochs) == (n.learning_rate, n.batch_size, n.epochs)
    assert mine.max_length == train.max_length and mine.warmup == train.warmup
    f = profile.finetune
    assert f.replicates_of("pruned", 8.0) == 3 and f.replicates_of("pruned", math.inf) == 3
    assert f.replicates_of("pruned", 1.0) == 1 and f.replicates_of("unpruned", 8.0) == 1
    with pytest.raises(ConfigError, match="replicate_epsilons"):
        prunepriv.load_profile("paper", {"finetune": {"replicate_epsilons": [-2]}})
    with pytest.raises(ConfigError, match="replicate_models"):
        prunepriv.load_profile("paper", {"finetune": {"replicate_models": ["pruend"]}})
    narrowed = prunepriv.load_profile("paper", {"finetune": {"models": ["unpruned"], "epsilons": [8]}}).finetune
    assert narrowed.epsilons_of("unpruned") == [8] and narrowed.replicates_of("unpruned", 8.0) == 1
    with pytest.raises(ConfigError, match="nonprivate.learning_rate"):
        prunepriv.load_profile("paper", {"finetune": {"nonprivate": {"learning_rate": 0}}})


def test_paper_profile_spends_its_records_on_the_experiment():
    """Issue 29: canaries a fifth of the training tokens at most, 32 per group, 128 candidates, 512 audit
    canaries, several hundred held-out patients."""
    from transformers import AutoTokenizer

    from prunepriv.lm.models import embedded_model_dir
    from prunepriv.lm.text import record_ids

    profile = prunepriv.load_profile("paper")
    corpus = prunepriv.corpus_for(profile)
    d, m = profile.data, profile.memorization
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    records = corpus.records("train")
    ids = record_ids(tokenizer, [r.text for r in records], profile.finetune.max_length)
    canary = sum(len(i) for i, r in zip(ids, records) if r.canary)
    assert canary / sum(len(i) for i in ids) <= 0.2
    assert d.n_canaries // len(d.canary_repetitions) >= 32 and d.n_heldout_canaries >= 32
    assert m.n_candidates >= 128 and d.n_audit_canaries >= 512
    assert len(corpus.records("heldout")) >= 200 and profile.finetune.eval_samples >= 150


def test_membership_sides_are_matched_by_note_type_and_length():
    def rec(i, kind, n):
        return Record(f"r{i}", "x" * n, kind)

    members = [rec(i, "lab", 100 + 10 * i) for i in range(10)] + [rec(10 + i, "clinic", 300) for i in range(5)]
    nonmembers = [rec(100, "lab", 151), rec(101, "lab", 99), rec(102, "clinic", 290), rec(103, "radiology", 200)]
    a, b = kind_matched(members, nonmembers, seed=0)
    assert [r.kind for r in a] == [r.kind for r in b] == ["lab", "lab", "clinic"]   # no radiology member: dropped
    assert [len(r.text) for r in a[:2]] == [150, 100]                               # the nearest lengths
    assert len({r.id for r in a}) == len(a)                                         # no member used twice


def test_a_timing_under_load_is_never_a_claim():
    base = [1.0, 1.01, 0.99, 1.0, 1.02]
    assert timing_check([0.8, 0.81, 0.79], 0.73, base, [0.8, 0.81, 0.79]) == ""
    assert "below the ideal" in timing_check([0.26, 0.8, 0.8], 0.6, base, [0.8, 0.8, 0.8])
    assert "spread" in timing_check([0.8, 0.8], 0.6, [1.0, 10.0], [0.8, 0.8])
    spread = claims.timing_spread(0.8, 0.01, 5, "")
    assert spread.kind == "timing" and spread.accepts(0.8, 0.81) and not spread.accepts(0.8, 0.9)
    assert claims.timing_spread(0.8, 0.01, 5, "unpruned repeats spread ×10").accepts(0.8, 0.8) is None


def test_audit_verdicts():
    assert audit_verdict(0.5, 4.7, 9.3) == "untestable"        # no guesses could have exceeded ε = 9.3
    assert audit_verdict(0.5, 4.7, 1.3) == "holds"
    assert audit_verdict(2.0, 4.7, 1.3) == "fails"
    assert audit_verdict(0.4, 4.7, math.inf) == "detects" and audit_verdict(0.0, 4.7, math.inf) == "blind"


def test_a_blind_positive_control_leaves_no_private_verdict_holding():
    table = pd.DataFrame({"model": ["pruned", "pruned", "pruned", "unpruned"],
                          "target_epsilon": [math.inf, 1.0, 8.0, 1.0],
                          "verdict": ["blind", "holds", "untestable", "holds"]})
    judged = with_control(table)
    assert list(judged["verdict"]) == ["blind", "untestable", "untestable", "holds"]   # unpruned: no control
    assert list(judged["control"]) == ["blind", "blind", "blind", "none"]
    assert list(judged["reason"]) == ["", "blind control", "ceiling", ""]     # why each untestable run is
    seeing = with_control(table.assign(verdict=["detects", "holds", "untestable", "holds"]))
    assert list(seeing["verdict"]) == ["detects", "holds", "untestable", "holds"]


def test_findings_count_untestable_runs_by_the_audit_tables_reason():
    """The findings read why a run is untestable from ``reason`` (one place decides it), not recomputed."""
    from prunepriv.stages import findings

    judged = with_control(pd.DataFrame({
        "model": ["pruned"] * 4, "target_epsilon": [math.inf, 1.0, 8.0, 8.0], "replicate": [0, 0, 0, 1],
        "verdict": ["blind", "holds", "untestable", "untestable"], "epsilon_lower_bound": [0.0, 0.1, 0.2, 0.3],
        "epsilon_attainable": [4.75] * 4, "epsilon_rdp_at_audit_delta": [math.inf, 1.3, 9.3, 9.3],
        "epsilon_prv_at_audit_delta": [math.inf, 1.2, 8.1, 8.1], "bound_below_accountant": [False, True, True, True],
        "audit_canaries": [512] * 4}))
    text = " ".join(findings._audit_lines(judged))
    assert "2 private run(s) whose accountant ε exceeds that are untestable" in text
    assert "1 more is untestable because the model's non-private control is blind" in text
    assert "not above 0 in every run" in text


def test_recovered_share_pairs_each_dp_run_with_its_own_replicates_nonprivate_run():
    runs = pd.DataFrame([{"model": "pruned", "target_epsilon": e, "replicate": r, "perplexity_private_before": 100.0,
                          "perplexity_private": p}
                         for r, (dp, nonprivate) in enumerate([(10.0, 1.0), (20.0, 2.0), (10.0, 1.0)])
                         for e, p in ((8.0, dp), (math.inf, nonprivate))])
    share, interval, n = recovered_share(runs, "pruned", 8.0)
    per = [math.log(100 / 10) / math.log(100), math.log(5) / math.log(50), math.log(10) / math.log(100)]
    assert n == 3 and share == pytest.approx(np.mean(per)) and interval[0] < share < interval[1]


def test_a_setting_run_once_keeps_its_own_interval_beside_replicated_ones():
    frame = pd.DataFrame({"model": ["a", "a", "b"], "target_epsilon": [8.0, 8.0, 1.0], "replicate": [0, 1, 0],
                          "x": [1.0, 3.0, 5.0], "x_low": [0.5, 2.5, 4.0], "x_high": [1.5, 3.5, 6.0]})
    out = collapse_replicates(frame, ["x"]).set_index("model")
    assert out.loc["a", "seeds"] == 2 and out.loc["a", "x_low"] < 0                 # across the two seeds
    assert out.loc["b", "seeds"] == 1 and (out.loc["b", "x_low"], out.loc["b", "x_high"]) == (4.0, 6.0)


def test_seed_spread_is_the_two_sample_band_and_a_single_run_is_untestable():
    spread = claims.seed_spread([10.0, 11.0, 12.0])
    half = 4.302653 * 1.0 * math.sqrt(2 / 3)
    assert spread.kind == "seeds" and spread.low == pytest.approx(11 - half) and spread.high == pytest.approx(11 + half)
    log = claims.seed_spread([10.0, 11.0, 12.0], log=True)
    assert log.low * log.high == pytest.approx(math.exp(2 * np.mean(np.log([10, 11, 12]))))
    assert claims.seed_spread([10.0]).kind == "untestable"


def _claim(ident, value, spread, holds=None):
    return claims.Claim(ident, ident, value, spread, holds)


def test_verdicts_fail_what_a_broken_rerun_would_change():
    band = claims.seed_spread([40.0, 42.0, 41.0], log=True)
    ref = [_claim("finetune.perplexity.pruned.eps8", 41.0, band, True),
           _claim("pruning.layers", "2 12 13 14 15 16 17 18", claims.exact("fp32 choice")),
           _claim("audit.below_accountant", -1.0, claims.predicate("bound"), True),
           _claim("finetune.perplexity.unpruned.eps8", 30.0, claims.untestable(), True)]

    def run(**changes):
        values = {c.id: c for c in ref}
        for ident, claim in changes.items():
            values[ident.replace("__", ".")] = claim
        return claims.compare(ref, [c for c in values.values() if c is not None]).set_index("claim")["verdict"]

    good = run(finetune__perplexity__pruned__eps8=_claim("finetune.perplexity.pruned.eps8", 41.5, band, True))
    assert set(good) == {"reproduced", "untestable"}
    # a DP run that learned nothing: the untuned model's perplexity (still "below before" is not asked here)
    untuned = run(finetune__perplexity__pruned__eps8=_claim("finetune.perplexity.pruned.eps8", 120.0, band, True))
    assert untuned["finetune.perplexity.pruned.eps8"] == "differs"
    assert run(pruning__layers=_claim("pruning.layers", "3 12 13 14 15 16 17 18", claims.exact(""))
               )["pruning.layers"] == "differs"
    assert run(audit__below_accountant=_claim("audit.below_accountant", 0.4, claims.predicate(""), False)
               )["audit.below_accountant"] == "fails"
    missing = claims.compare(ref, ref[1:]).set_index("claim")["verdict"]
    assert missing["finetune.perplexity.pruned.eps8"] == "missing"
    extra = claims.compare(ref, ref + [_claim("new.claim", 1.0, claims.untestable())]).set_index("claim")["verdict"]
    assert extra["new.claim"] == "extra"


def test_a_rerun_timed_under_load_is_untestable_whatever_its_ratio():
    spread = claims.timing_spread(0.8, 0.01, 5)
    ref = claims.Claim("latency.decode.k8", "t", 0.8, spread, True, claims.timing_interval(0.8, 0.01, 5))
    busy = claims.Claim("latency.decode.k8", "t", 1.1, claims.timing_spread(1.1, 0.3, 5, "repeats spread ×1.4"), None)
    assert claims.verdict(ref, busy) == "untestable"
    low, high = ref.interval                                   # one median's interval: half the spread's width
    assert low < 0.8 < high and (high - low) == pytest.approx((spread.high - spread.low) / math.sqrt(2))
