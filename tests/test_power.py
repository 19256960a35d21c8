"""A null result says what it could have detected (issue 14): prunepriv.report.power and the claims."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prunepriv.attacks import probes
from prunepriv.report import power
from prunepriv.report.claims import Claim, bootstrap_spread, claims_table, compare
from prunepriv.stages import findings


def test_detectable_effect_is_2_8_standard_errors_of_a_null_interval():
    # a 95% interval of half-width 1.96 SE: 80% power at the 5% level needs (1.96 + 0.84) SE
    assert power.detectable_effect((-1.96, 1.96), 0.0) == pytest.approx(2.8016, abs=1e-3)
    assert power.detectable_effect((0.4, 0.6), 0.5) == pytest.approx(0.1 * 2.8016 / 1.96, rel=1e-4)
    assert power.detectable_effect((0.55, 0.7), 0.5) is None            # excludes the null: a finding
    assert power.detectable_effect(None, 0.5) is None and power.detectable_effect((0.4, 0.6), None) is None
    assert power.describe((0.4, 0.6), 0.5) == "null result: effects ≥ 0.143 detectable (80% power)"


def test_claims_table_and_comparison_state_null_results():
    null = Claim("memorization.mia.x", "AUC", 0.52, bootstrap_spread((0.40, 0.64), "bootstrap"), None,
                 (0.40, 0.64), null=0.5)
    found = Claim("memorization.mia.y", "AUC", 0.70, bootstrap_spread((0.60, 0.80), "bootstrap"), None,
                  (0.60, 0.80), null=0.5)
    table = claims_table([null, found]).set_index("claim")
    assert table.loc["memorization.mia.x", "detectable"].startswith("null result: effects ≥ 0.17")
    assert table.loc["memorization.mia.y", "detectable"] == ""
    assert compare([null], [null]).iloc[0]["detectable"].startswith("null result")


def test_findings_give_the_detectable_auc_shift_of_a_null_membership_result():
    mia = pd.DataFrame([{"model": "unpruned", "target_epsilon": 8.0, "attack": "loss", "auc": 0.52,
                         "members": 40, "nonmembers": 40}])
    text = findings.memorization(pd.DataFrame(), mia, pd.DataFrame())
    assert "a null result, AUC shifts ≥ 0." in text and "detectable (80% power)" in text


def test_membership_rows_carry_bootstrap_intervals_for_auc_and_tpr_at_1pct_fpr():
    rng = np.random.default_rng(0)
    lp = [rng.normal(-2.0 + (0.3 if i < 100 else 0.0), 1.0, 12) for i in range(200)]   # members a bit likelier
    ref = [rng.normal(-2.0, 1.0, 12) for _ in range(200)]
    rows = {r["attack"]: r for r in probes.membership_inference(["x"] * 100, ["y"] * 100, lp, ref)}
    loss = rows["loss"]
    assert loss["auc_low"] < loss["auc"] < loss["auc_high"] and 0.05 < loss["auc_high"] - loss["auc_low"] < 0.4
    assert loss["tpr_at_0.01_fpr_low"] <= loss["tpr_at_0.01_fpr"] <= loss["tpr_at_0.01_fpr_high"]
    mia = pd.DataFrame([{**loss, "model": "m", "target_epsilon": 1.0}])
    text = findings.memorization(pd.DataFrame(), mia, pd.DataFrame())
    assert "TPR at 1% FPR" in text and f"{loss['auc_low']:.2f}–{loss['auc_high']:.2f}" in text
