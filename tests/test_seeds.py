"""Independent replicates of a setting: their own seeds and folders, and tables, claims and figures that
report the mean and the interval across them (prunepriv.report.seeds)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model
from scipy import stats

import prunepriv
from prunepriv.report import claims
from prunepriv.report.seeds import collapse_replicates, t_interval
from prunepriv.stages import experiments, plots

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "paper" / "reference"


def test_t_interval_and_collapse():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(x) for x in t_interval([5.0]))
    frame = pd.DataFrame({"model": ["a", "a", "b"], "target_epsilon": [1.0, 1.0, 1.0], "replicate": [0, 1, 0],
                          "seed": [7, 8, 9], "x": [1.0, 3.0, 5.0], "text": ["p", "q", "r"]})
    out = collapse_replicates(frame, ["x"])
    assert list(out["seeds"]) == [2, 1] and list(out["x"]) == [2.0, 5.0] and list(out["text"]) == ["p", "r"]
    assert out["x_low"].iloc[0] < 2.0 < out["x_high"].iloc[0] and math.isnan(out["x_low"].iloc[1])
    assert "replicate" not in out and "seed" not in out
    single = frame[frame["replicate"] == 0]
    assert collapse_replicates(single, ["x"]).drop(columns="seeds").equals(single)


def test_perplexities_collapse_on_the_log_scale_as_the_claims_do():
    ppl = [12.7, 67.0, 60.9]                        # a seed-dependent setting: the raw-scale interval goes below 0
    frame = pd.DataFrame({"model": ["pruned"] * 3, "target_epsilon": [math.inf] * 3, "replicate": [0, 1, 2],
                          "perplexity_private": ppl, "final_loss": [1.0, 2.0, 3.0], "epsilon_rdp": [math.inf] * 3,
                          "perplexity_general": [100.0, math.nan, 400.0]})
    row = collapse_replicates(frame, ["perplexity_private", "final_loss"]).iloc[0]
    assert row["perplexity_private"] == pytest.approx(math.exp(np.mean(np.log(ppl))))
    assert 0 < row["perplexity_private_low"] < row["perplexity_private"] < row["perplexity_private_high"]
    low, high = t_interval(np.log(ppl))
    assert (row["perplexity_private_low"], row["perplexity_private_high"]) == pytest.approx((math.exp(low), math.exp(high)))
    assert row["final_loss"] == 2.0 and (row["final_loss_low"], row["final_loss_high"]) == t_interval([1.0, 2.0, 3.0])
    assert row["epsilon_rdp"] == math.inf and row["perplexity_general"] == pytest.approx(200.0)   # ∞ kept, NaN left out
    mean, _, interval = claims._seeded(ppl, log=True)            # the claim states the same value and interval
    assert mean == pytest.approx(row["perplexity_private"])
    assert interval == pytest.approx((row["perplexity_private_low"], row["perplexity_private_high"]))


@pytest.mark.skipif(not (REFERENCE / "manifest.json").is_file(), reason="no committed reference run")
def test_claims_of_replicated_runs_are_means_with_intervals_across_seeds(tmp_path):
    results = tmp_path / "results/paper"
    shutil.copytree(REFERENCE, results)
    single = {c.id: c for c in claims.claims_from(results)}
    once = lambda t: (t["model"] == "unpruned") & (t["target_epsilon"] == 8)       # noqa: E731  (run once)
    for name, column in (("finetune.csv", "perplexity_private"), ("memorization.csv", "mia_auc_reference")):
        table = pd.read_csv(results / name)
        twin = table[once(table)].assign(replicate=1, **{column: table.loc[once(table), column] * 1.1})
        pd.concat([table, twin]).to_csv(results / name, index=False)
    found = {c.id: c for c in claims.claims_from(results)}
    assert found.keys() == single.keys()                     # one claim per setting, not per run
    ppl = found["finetune.perplexity.unpruned.eps8"]         # perplexities average on the log scale
    assert ppl.value == pytest.approx(single["finetune.perplexity.unpruned.eps8"].value * math.sqrt(1.1))
    assert ppl.interval[0] < ppl.value < ppl.interval[1] and "run(s)" in ppl.text
    assert ppl.spread.kind == "seeds" and single["finetune.perplexity.unpruned.eps8"].spread.kind != "seeds"
    mia = found["memorization.mia.unpruned.eps8"]
    assert mia.value == pytest.approx(single["memorization.mia.unpruned.eps8"].value * 1.05)
    assert mia.interval != single["memorization.mia.unpruned.eps8"].interval


def test_each_replicate_is_its_own_run(byte_tokenizer, tmp_path):
    profile = prunepriv.load_profile("smoke", {
        "data": {"n_patients": 24},
        "finetune": {"epsilons": [float("inf")], "models": ["unpruned"], "replicates": 2, "utility_match": None, "batch_size": 8,
                     "replicate_models": None, "replicate_epsilons": None,
                     "physical_batch_size": 4, "epochs": 0.3, "eval_samples": 4, "max_length": 24}})
    corpus = prunepriv.corpus_for(profile)
    runs = experiments.finetune_sweep(tiny_model("llama", layers=2), byte_tokenizer, corpus, [], profile, tmp_path)
    assert list(runs["replicate"]) == [0, 1] and runs["seed"].nunique() == 2
    assert [Path(d).name for d in runs["run_dir"]] == ["unpruned-eps-inf", "unpruned-eps-inf-rep1"]
    assert runs["final_loss"].iloc[0] != runs["final_loss"].iloc[1]          # other batches, another result
    assert all((Path(d) / "eval_nll.csv").is_file() for d in runs["run_dir"])
    fig = plots.utility_vs_epsilon(runs)                   # one point per setting, its interval across seeds
    assert "across 2 seeds" in fig.axes[0].get_title()
    assert np.isfinite(collapse_replicates(runs, ["perplexity_private"])["perplexity_private_low"]).all()


def test_a_replicate_trains_on_the_same_notes_with_canaries_of_its_own():
    corpus = prunepriv.corpus_for(prunepriv.load_profile("smoke"))
    assert corpus.for_replicate(0) is corpus
    other = corpus.for_replicate(1)
    assert other is corpus.for_replicate(1)                          # drawn once
    notes = lambda c: sorted(r.text for r in c.splits["train"] if r.canary is None)   # noqa: E731
    assert notes(other) == notes(corpus)
    assert [c.id for c in other.canaries] == [c.id for c in corpus.canaries]
    assert not {c.secret for c in other.canaries} & {c.secret for c in corpus.canaries}
    audit = lambda c: [x.in_train for x in c.canaries_for("audit")]   # noqa: E731
    assert audit(other) != audit(corpus)                             # its own fair coins
    again = prunepriv.corpus_for(prunepriv.load_profile("smoke")).for_replicate(1)
    assert [c.text for c in again.canaries] == [c.text for c in other.canaries]
    for c in other.canaries:                                         # trained as often as the profile says
        assert other.texts("train").count(c.text) == c.repetitions * (c.purpose == "exposure") + \
            (c.purpose == "audit") * int(c.in_train)


def test_findings_name_the_seed_of_each_replicate():
    from prunepriv.stages import findings

    table = pd.DataFrame({"model": ["unpruned", "unpruned"], "target_epsilon": [8.0, 8.0], "replicate": [0, 1],
                          "samples": [4, 4], "empty_samples": [0, 1], "mean_tokens": [10.0, 11.0],
                          "bertscore_f1_heldout": [0.8, 0.7]})
    text = findings.synthetic(table)
    assert "unpruned, ε = 8: 4 samples (0 empty)" in text and "unpruned, ε = 8, seed 2: 4 samples (1 empty)" in text
