"""Independent replicates of one (model, ε) setting, reduced to their mean and a 95% interval across seeds.

``finetune.replicates`` trains each (model, ε) several times, each run with its
own seed (its own Poisson batches and noise, :func:`prunepriv.privacy.specs.run_seed`).
Tables keep one row per run (a ``replicate`` column); the claims, the paper's
tables and the figures read them through :func:`collapse_replicates`: one row
per setting, numbers averaged over its runs, and for the columns named the
Student-t interval of the mean across runs, which then replaces any
within-run interval (it includes the training noise that a within-run
bootstrap over evaluation records cannot see). Perplexities are averaged on
the log scale (geometric mean, interval of the mean log-perplexity mapped
back), as the claims average them (:func:`prunepriv.report.claims._seeded`):
one value per quantity, and an interval that cannot fall below zero.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats  # scipy is a dependency of opacus (pinned)

KEYS = ("model", "target_epsilon")


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (NaN with fewer than two finite values)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()) - half, float(x.mean()) + half


def row_interval(row, column: str) -> tuple[float, float] | None:
    """``(low, high)`` of ``column`` from a row's ``{column}_low`` / ``{column}_high`` (a table row: a
    named tuple, a Series or a dict); ``None`` where the table has none or they are not finite."""
    get = row.get if isinstance(row, dict) else (lambda name, default: getattr(row, name, default))
    low, high = get(f"{column}_low", math.nan), get(f"{column}_high", math.nan)
    return (float(low), float(high)) if math.isfinite(low) and math.isfinite(high) else None


def on_log_scale(column: str) -> bool:
    """Whether ``column`` is averaged geometrically: perplexities (and their interval bounds)."""
    return column.startswith("perplexity")


def log_t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """:func:`t_interval` of the logs of ``values`` mapped back: the interval of their geometric mean."""
    x = np.asarray(values, dtype=float)
    low, high = t_interval(np.log(x[np.isfinite(x) & (x > 0)]), level)
    return math.exp(low), math.exp(high)      # exp(NaN) is NaN: fewer than two positive values


def mean_over(values, log: bool) -> float:
    """Geometric (``log``: of the positive values) or arithmetic mean of ``values`` without the missing
    ones; NaN when none is left."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if log:
        x = x[x > 0]
    if not len(x):
        return math.nan
    return float(np.exp(np.mean(np.log(x)))) if log else float(np.mean(x))


def mean_of(values: pd.Series, column: str) -> float:
    """The mean of one column over a setting's runs, without its missing values (as the claims,
    :func:`prunepriv.report.claims._seeded`): geometric for perplexities, arithmetic otherwise; the
    non-private runs' ε (∞) stays ∞."""
    return mean_over(values, on_log_scale(column))       # ∞ (a non-private run's ε) is a value, NaN is left out


def replicated(frame: pd.DataFrame) -> bool:
    """Whether any (model, ε) of ``frame`` has more than one run."""
    return "replicate" in frame and len(frame) > 0 and int(frame.groupby(list(KEYS)).size().max()) > 1


def collapse_replicates(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per (model, ε): numeric columns averaged over its runs (:func:`mean_of`; others from its
    first run), ``seeds`` the number of runs, and ``{c}_low`` / ``{c}_high`` the 95% interval across
    runs for each of ``columns`` (on the log scale for perplexities; a setting run once keeps the
    interval its row has). ``frame`` unchanged (``seeds`` = 1)
    when no setting has more than one run."""
    if not replicated(frame):
        return frame.assign(seeds=1)
    rows = []
    for _, group in frame.groupby(list(KEYS), sort=False):
        row = group.iloc[0].to_dict()
        for column in group.columns:
            if column not in KEYS and pd.api.types.is_numeric_dtype(group[column]):
                row[column] = mean_of(group[column], column)
        row["seeds"] = len(group)
        for column in columns:
            if len(group) > 1:                       # a setting run once keeps its own (within-run) interval
                interval = log_t_interval if on_log_scale(column) else t_interval
                row[f"{column}_low"], row[f"{column}_high"] = interval(group[column])
        rows.append(row)
    return pd.DataFrame(rows).drop(columns=["replicate", "seed"], errors="ignore")


def recovered_share(runs: pd.DataFrame, model: str, epsilon: float) -> tuple[float, tuple[float, float] | None, int]:
    """The share of the non-private runs' held-out log-perplexity gain that ``model``'s runs at ``epsilon``
    recover (issue 29's measure of whether DP learns): per replicate r, (log before − log DP_r) /
    (log before − log non-private_r), the two runs of a replicate sharing its canaries; the mean over
    replicates with its Student-t 95% interval (None with one replicate). NaN when either is missing.
    A replicate whose non-private run gained nothing has no share (division by a gain ≤ 0): it is left
    out, and the count returned (which the claim prints) is that of the replicates kept."""
    def of(eps: float) -> pd.DataFrame:
        rows = runs[(runs["model"] == model) & (runs["target_epsilon"] == eps)]
        return rows.set_index(rows["replicate"] if "replicate" in rows else pd.RangeIndex(len(rows)))

    dp, nonprivate = of(epsilon), of(math.inf)
    common = sorted(set(dp.index) & set(nonprivate.index))
    shares = []
    for r in common:
        before = math.log(float(dp.loc[r, "perplexity_private_before"]))
        gain = before - math.log(float(nonprivate.loc[r, "perplexity_private"]))
        if gain > 0:
            shares.append((before - math.log(float(dp.loc[r, "perplexity_private"]))) / gain)
    if not shares:
        return math.nan, None, 0
    low, high = t_interval(shares)
    return float(np.mean(shares)), ((low, high) if math.isfinite(low) else None), len(shares)
