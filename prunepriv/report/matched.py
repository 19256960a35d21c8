"""The utility-matched comparison: a DP run against the non-private run of the same model stopped at the
DP run's held-out perplexity (``finetune.utility_match``, :func:`prunepriv.stages.experiments.matched_runs`).

Memorization is compared at equal utility, so that "DP memorizes less" is
not just "DP learned less". Each difference is DP minus matched (negative: the
DP model memorizes less) with a 95% interval: across seeds where the setting
has several replicates (Student t of the per-seed differences), else over
canaries (exposure: a bootstrap of per-canary paired differences, both runs
rank the same canaries on the same candidates) or records (AUC: the two
Hanley–McNeil variances added, which ignores their positive correlation and
so errs wide).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from prunepriv.attacks import probes as attacks
from prunepriv.privacy.record import base_model, is_matched
from prunepriv.report.seeds import mean_of, t_interval


def matched_pairs(runs: pd.DataFrame, epsilon: float) -> list[tuple[str, str]]:
    """(DP model key, matched model key) for every base model with utility-matched runs in ``runs``."""
    matched = list(dict.fromkeys(m for m in runs["model"] if is_matched(m)))      # in table order
    return [(base_model(m), m) for m in matched
            if ((runs["model"] == base_model(m)) & (runs["target_epsilon"] == epsilon)).any()]


def _runs(table: pd.DataFrame, model: str, epsilon: float) -> pd.DataFrame:
    rows = table[(table["model"] == model) & (table["target_epsilon"] == epsilon)]
    return rows.assign(replicate=rows["replicate"] if "replicate" in rows else 0)


def excess_top(exposure: pd.DataFrame, top: int) -> float:
    """Mean excess of ``top``× canaries over each one's untuned exposure (one run's rows): the quantity of
    the exposure claims (``exposure_excess_rR``, :func:`prunepriv.stages.memorization._exposure_by_reps`)."""
    return float(exposure[exposure["repetitions"] == top]["excess"].mean())


def exposure_difference(exposure: pd.DataFrame, dp: str, matched: str, epsilon: float,
                        top: int) -> tuple[float, tuple[float, float] | None]:
    """Excess exposure of ``top``× canaries (over their untuned exposure), DP run minus matched run, and its
    95% interval (across seeds, or a bootstrap of per-canary paired differences with one seed: the two
    runs of a replicate share its canaries)."""
    a, b = _runs(exposure, dp, epsilon), _runs(exposure, matched, math.inf)
    seeds = sorted(set(a["replicate"]) & set(b["replicate"]))
    diffs = [excess_top(a[a["replicate"] == r], top) - excess_top(b[b["replicate"] == r], top) for r in seeds]
    if not diffs:
        return math.nan, None
    if len(diffs) > 1:
        low, high = t_interval(diffs)
        return float(np.mean(diffs)), (low, high)
    paired = (a[a["replicate"] == seeds[0]].set_index("canary_id")["excess"]
              - b[b["replicate"] == seeds[0]].set_index("canary_id")["excess"]).dropna()
    reps = a[a["replicate"] == seeds[0]].set_index("canary_id")["repetitions"].reindex(paired.index)
    low, high = attacks.mean_interval(paired[reps == top])
    return diffs[0], ((low, high) if math.isfinite(low) else None)


def auc_difference(mia: pd.DataFrame, dp: str, matched: str, epsilon: float,
                   attack: str = "reference") -> tuple[float, tuple[float, float] | None]:
    """Membership AUC of ``attack``, DP run minus matched run, and its 95% interval."""
    a, b = (rows[rows["attack"] == attack] for rows in (_runs(mia, dp, epsilon), _runs(mia, matched, math.inf)))
    merged = a.merge(b, on="replicate", suffixes=("_dp", "_matched"))
    if not len(merged):
        return math.nan, None
    diffs = (merged["auc_dp"] - merged["auc_matched"]).to_numpy(float)
    if len(diffs) > 1:
        return float(diffs.mean()), t_interval(diffs)
    r = merged.iloc[0]
    halves = [(hi - lo) / 2 for lo, hi in (attacks.auc_interval(float(r[f"auc_{s}"]), int(r[f"members_{s}"]),
                                                                int(r[f"nonmembers_{s}"])) for s in ("dp", "matched"))]
    half = math.hypot(*halves)
    return float(diffs[0]), (float(diffs[0]) - half, float(diffs[0]) + half)


COLUMNS = ("model", "epsilon", "seeds", "perplexity_dp", "perplexity_matched", "matched_steps", "canary_repetitions",
           "exposure_difference", "exposure_difference_low", "exposure_difference_high",
           "auc_difference", "auc_difference_low", "auc_difference_high")


def comparison(runs: pd.DataFrame, exposure: pd.DataFrame, mia: pd.DataFrame) -> pd.DataFrame:
    """``tab:utility-matched``: one row per model with utility-matched runs: both perplexities, the
    matched runs' steps, and the exposure and AUC differences (DP minus matched) with their intervals
    (no rows when the profile has no ``finetune.utility_match``)."""
    if "matched_epsilon" not in runs or not runs["matched_epsilon"].notna().any() or exposure.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    eps = float(runs["matched_epsilon"].dropna().iloc[0])
    top = int(exposure["repetitions"].max())
    rows = []
    for dp, twin in matched_pairs(runs, eps):
        value, interval = exposure_difference(exposure, dp, twin, eps, top)
        auc, auc_ci = auc_difference(mia, dp, twin, eps)
        a, b = _runs(runs, dp, eps), _runs(runs, twin, math.inf)
        rows.append({"model": dp, "epsilon": eps, "seeds": len(b),
                     "perplexity_dp": mean_of(a["perplexity_private"], "perplexity_private"),
                     "perplexity_matched": mean_of(b["perplexity_private"], "perplexity_private"),
                     "matched_steps": float(b["steps"].mean()), "canary_repetitions": top,
                     "exposure_difference": value, "exposure_difference_low": (interval or (math.nan,))[0],
                     "exposure_difference_high": (interval or (math.nan, math.nan))[1],
                     "auc_difference": auc, "auc_difference_low": (auc_ci or (math.nan,))[0],
                     "auc_difference_high": (auc_ci or (math.nan, math.nan))[1]})
    return pd.DataFrame(rows, columns=list(COLUMNS))
