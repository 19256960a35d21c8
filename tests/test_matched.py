"""The utility-matched non-private baseline (issue 14): a non-private run stopped at its DP twin's held-out
perplexity, the stop rule of the trainer, and the DP-minus-matched comparisons with their intervals."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model

import prunepriv
from prunepriv.config import ConfigError
from prunepriv.errors import PrunePrivError
from prunepriv.lm.evaluation import perplexity
from prunepriv.privacy.record import base_model, is_matched, matched_name
from prunepriv.privacy.specs import LoRASpec, PrivacySpec, TrainSpec
from prunepriv.privacy.stopping import StopRule
from prunepriv.privacy.train import finetune
from prunepriv.report import claims, matched
from prunepriv.stages import experiments, findings, plots

LORA = LoRASpec(4, 8, 0.0, ["q_proj", "v_proj"])
TRAIN = TrainSpec(2.0, 1e-2, 8, 4, 24, 100, 0, "seeded")


def _texts(n: int = 16) -> list[str]:
    return [f"record {i}: the patient reports mild pain and fever on day {i % 5}." for i in range(n)]


def test_stop_rule_stops_part_way_through_the_step_that_reaches_the_target_and_reloads(byte_tokenizer, tmp_path):
    base = tiny_model("llama", layers=2)
    privacy = PrivacySpec(math.inf, None, 1.0, None, "rdp")
    seen: list[float] = []

    def held_out(model) -> float:
        assert not model.training                        # evaluated in eval mode
        seen.append(perplexity(model, byte_tokenizer, _texts()[:4], 24, 4))
        return seen[-1]

    finetune(copy.deepcopy(base), byte_tokenizer, _texts(), tmp_path / "path", LORA, privacy, TRAIN,
             progress=False, stop_rule=StopRule("never", held_out, -math.inf))
    assert len(seen) == 4 and seen[1] < seen[0]          # the held-out perplexity after each of the 4 steps
    target = (seen[0] + seen[1]) / 2                     # reached during the second step
    result = finetune(copy.deepcopy(base), byte_tokenizer, _texts(), tmp_path / "run", LORA, privacy, TRAIN,
                      progress=False, stop_rule=StopRule("half-way", held_out, target))
    assert result.privacy.steps == 2 and len(result.log) == 2          # 4 steps planned
    fraction = json.loads((tmp_path / "run/run.json").read_text())["stop_fraction"]
    assert 0 < fraction < 1
    final = perplexity(result.model.eval(), byte_tokenizer, _texts()[:4], 24, 4)
    assert target - 0.05 * (seen[0] - seen[1]) <= final <= target       # at the target, not a step below
    assert (tmp_path / "run/adapter/adapter_model.safetensors").is_file()
    assert not (tmp_path / "run/checkpoint.pt").exists()
    again = finetune(copy.deepcopy(base), byte_tokenizer, _texts(), tmp_path / "run", LORA, privacy, TRAIN,
                     progress=False, stop_rule=StopRule("half-way", lambda m: pytest.fail("retrained"), target))
    assert again.privacy.steps == 2                                    # the same rule: reloaded
    reloaded = perplexity(again.model.eval(), byte_tokenizer, _texts()[:4], 24, 4)
    assert reloaded == pytest.approx(final, rel=1e-5)                  # the settled weights were saved
    assert json.loads((tmp_path / "run/run.json").read_text())["digest"] != \
        json.loads((tmp_path / "path/run.json").read_text())["digest"]


def test_stop_rule_is_refused_for_a_private_run(byte_tokenizer, tmp_path):
    with pytest.raises(PrunePrivError, match="no accountant covers"):
        finetune(tiny_model("llama", layers=2), byte_tokenizer, _texts(), tmp_path, LORA,
                 PrivacySpec(4.0, None, 1.0, None, "rdp"), TRAIN, progress=False,
                 stop_rule=StopRule("x", lambda m: 0.0, 1.0))


def test_utility_match_must_name_a_finite_epsilon_of_the_grid():
    with pytest.raises(ConfigError, match="utility_match"):
        prunepriv.load_profile("smoke", {"finetune": {"utility_match": 8}})          # smoke trains ε ∈ {∞, 3}
    with pytest.raises(ConfigError, match="utility_match"):
        prunepriv.load_profile("smoke", {"finetune": {"utility_match": float("inf")}})
    assert prunepriv.load_profile("smoke", {"finetune": {"utility_match": 3}}).finetune.utility_match == 3


def test_sweep_adds_a_matched_run_that_stops_at_its_dp_twins_perplexity(byte_tokenizer, tmp_path):
    profile = prunepriv.load_profile("smoke", {
        "data": {"n_patients": 24},
        "finetune": {"epsilons": [float("inf"), 8], "models": ["unpruned"], "utility_match": 8, "batch_size": 8,
                     "physical_batch_size": 4, "epochs": 1.0, "eval_samples": 4, "max_length": 24,
                     "learning_rate": 0.01}})
    corpus = prunepriv.corpus_for(profile)
    runs = experiments.finetune_sweep(tiny_model("llama", layers=2), byte_tokenizer, corpus, [], profile, tmp_path)
    assert list(runs["model"]) == ["unpruned", "unpruned", "unpruned-matched"]
    dp = runs[(runs["model"] == "unpruned") & (runs["target_epsilon"] == 8)].iloc[0]
    twin = runs[runs["model"] == "unpruned-matched"].iloc[0]
    assert twin["target_epsilon"] == math.inf and twin["noise_multiplier"] == 0
    assert twin["matched_epsilon"] == 8 and twin["stop_perplexity"] == dp["perplexity_private"]
    full = runs[(runs["model"] == "unpruned") & (runs["target_epsilon"] == math.inf)].iloc[0]
    # the DP run barely learns here (σ ≈ 1 on 8 records): the twin gets there in fewer steps and stops there
    assert 0.99 * dp["perplexity_private"] <= twin["perplexity_private"] <= dp["perplexity_private"]
    assert dp["perplexity_private"] < twin["perplexity_private_before"]
    assert twin["steps"] < full["steps"] and twin["seed"] not in set(runs["seed"].iloc[:2])
    curves = experiments.training_curves(runs)                 # drawn in its base model's panel
    assert set(curves["model"]) == {"unpruned"} and "inf (utility-matched)" in set(curves["target_epsilon"])
    fig = plots.utility_vs_epsilon(runs)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "unpruned, non-private, utility-matched" in labels and not any("unpruned-matched" in x for x in labels)
    assert "non-private, stopped once its perplexity on the few held-out records it checks after each step " \
           "reached its ε = 8 run's" in findings.finetuning(runs)


def test_model_keys_of_matched_runs():
    assert matched_name("pruned") == "pruned-matched" and base_model("pruned-matched") == "pruned"
    assert base_model("pruned") == "pruned" and is_matched("unpruned-matched") and not is_matched("unpruned")


def _tables(seeds: int = 1, shift: float = -1.0):
    """Exposure and MIA tables of a DP run (ε = 8) and its matched twin: 8 canaries repeated 4× and 8 never
    trained; the DP run's trained canaries sit ``shift`` bits from the twin's."""
    rng = np.random.default_rng(0)
    exposure, mia = [], []
    for r in range(seeds):
        for c in range(16):
            reps = 4 if c < 8 else 0
            prior = rng.normal(2, 1)
            for model, eps, extra in (("unpruned", 8.0, shift if reps else 0.0), ("unpruned-matched", math.inf, 0.0)):
                value = prior + extra + rng.normal(0, 0.1)
                exposure.append({"model": model, "target_epsilon": eps, "replicate": r, "canary_id": f"c{c}",
                                 "repetitions": reps, "exposure": value, "exposure_untuned": prior,
                                 "excess": value - prior})
        for model, eps, auc in (("unpruned", 8.0, 0.55), ("unpruned-matched", math.inf, 0.65 + 0.01 * r)):
            mia.append({"model": model, "target_epsilon": eps, "replicate": r, "attack": "reference", "auc": auc,
                        "members": 64, "nonmembers": 64})
    return pd.DataFrame(exposure), pd.DataFrame(mia)


def test_paired_exposure_difference_removes_each_canarys_prior():
    exposure, mia = _tables()
    value, (low, high) = matched.exposure_difference(exposure, "unpruned", "unpruned-matched", 8.0, 4)
    assert value == pytest.approx(-1.0, abs=0.15) and low < value < high and high < 0
    assert high - low < 0.5                       # paired by canary: the 1-bit spread of priors cancels
    auc, (lo, hi) = matched.auc_difference(mia, "unpruned", "unpruned-matched", 8.0)
    assert auc == pytest.approx(-0.10) and lo < -0.1 < hi and hi - lo > 0.1
    exposure, mia = _tables(seeds=3)
    value, (low, high) = matched.exposure_difference(exposure, "unpruned", "unpruned-matched", 8.0, 4)
    assert low < value < high                    # across the 3 seeds (Student t)
    auc, (lo, hi) = matched.auc_difference(mia, "unpruned", "unpruned-matched", 8.0)
    assert auc == pytest.approx(-0.11) and lo < auc < hi and hi - lo < 0.1


def test_comparison_table_claims_and_findings():
    exposure, mia = _tables()
    runs = pd.DataFrame([
        {"model": "unpruned", "target_epsilon": 8.0, "perplexity_private": 30.0, "steps": 10,
         "matched_epsilon": math.nan, "stop_perplexity": math.nan},
        {"model": "unpruned-matched", "target_epsilon": math.inf, "perplexity_private": 29.0, "steps": 2,
         "matched_epsilon": 8.0, "stop_perplexity": 30.0}])
    table = matched.comparison(runs, exposure, mia)
    assert list(table.columns) == list(matched.COLUMNS) and len(table) == 1
    assert table["exposure_difference_high"].iloc[0] < 0 and table["matched_steps"].iloc[0] == 2
    text = findings.memorization(pd.DataFrame(), mia.assign(attack="x"), pd.DataFrame(), table)
    assert "equal utility" in text and "excludes 0" in text
    empty = matched.comparison(runs.drop(columns="matched_epsilon"), exposure, mia)
    assert empty.empty and list(empty.columns) == list(matched.COLUMNS)
    memo = pd.DataFrame({"model": ["unpruned"], "target_epsilon": [8.0], "exposure_r4": [1.0]})
    found = {c.id: c for c in claims._matched_claims({"finetune.csv": runs, "memorization.csv": memo,
                                                     "canary_exposure.csv": exposure,
                                                     "membership_inference.csv": mia})}
    single = found["finetune.matched.unpruned"]                  # one seed: a ratio, no interval to test 1 by
    assert single.value == pytest.approx(29 / 30) and single.holds is None and single.spread.kind == "untestable"
    ex = found["memorization.matched.unpruned.exposure"]
    assert ex.holds is None and ex.interval[1] < 0 and ex.value == pytest.approx(-1.0, abs=0.15)
    assert found["memorization.matched.unpruned.mia"].value == pytest.approx(-0.10)


def test_memorization_figure_draws_matched_runs_as_diamonds():
    rows = []
    for model, eps in (("unpruned", 8.0), ("unpruned", math.inf), ("unpruned-matched", math.inf)):
        rows.append({"model": model, "target_epsilon": eps, "epsilon_rdp": eps, "extraction_excess": 0.0,
                     "prefix_pii_train": 0.1, "prefix_pii_heldout": 0.1, "exposure_trained": 2.0,
                     "exposure_heldout": 1.0, "exposure_chance": 1.4, "mia_auc_reference": 0.6})
    fig = plots.epsilon_vs_memorization(pd.DataFrame(rows))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "unpruned, non-private, utility-matched" in labels
