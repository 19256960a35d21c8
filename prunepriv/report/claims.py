"""The paper's claims, read from a profile's result tables, and their comparison with a reference run.

Each :class:`Claim` carries the value one run measured, a :class:`Spread` — how
far another run may land from that value and still reproduce it, *as measured
by the run that made the claim* — and, where the claim is qualitative ("pruning
cuts latency", "the audit stays below the accountant"), whether it holds in that
run. The spread is never a percentage chosen by hand:

* ``seeds`` — a setting trained several times (``finetune.replicates``): a rerun's
  mean of n seeds lies within ``t(n−1) · s · √(2/n)`` of the reference's mean (s the
  standard deviation across the reference's seeds; on the log scale for
  perplexities and their ratios);
* ``bootstrap`` — a number computed by forward passes alone (an untuned model's
  perplexity, a membership AUC on the untuned model): the reference's 95%
  bootstrap interval over patients;
* ``timing`` — a latency ratio timed on an idle machine: two medians of n
  interleaved repeats differ by at most ``t(n−1) · s · √(π/n)``; a timing taken
  under load (:func:`prunepriv.stages.experiments.timing_check`) is ``untestable``;
* ``exact`` — what is deterministic given the data: a layer set chosen in fp32, an
  accountant's ε, a parameter count, an agreement computed in fp32 (compared at the
  printed digits);
* ``untestable`` — a trained result of a single run: the spread between training
  runs was not measured, so no rerun can be judged against it;
* ``predicate`` — only the qualitative part is compared.

``prunepriv verify`` and notebook ``07_paper`` (which writes the paper's numbers)
both use :func:`claims`, so the paper and the check can never disagree.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats  # scipy is a dependency of opacus (pinned)

from prunepriv.attacks import probes as attacks
from prunepriv.errors import PrunePrivError
from prunepriv.pipeline.registry import claim_files
from prunepriv.privacy.record import SPIKE, base_model, is_matched
from prunepriv.privacy.specs import epsilon_label, epsilon_text
from prunepriv.report import matched, power
from prunepriv.report.seeds import (collapse_replicates, log_t_interval, mean_over, recovered_share, row_interval,
                                    t_interval)

TABLES = claim_files()   # what stage 07 reads, from the registry
KINDS = ("seeds", "bootstrap", "timing", "exact", "untestable", "predicate")
ONE_RUN = "one run: the spread between training runs is not measured"


@dataclass(frozen=True)
class Spread:
    """Where a rerun's value must lie to reproduce a claim, and where that band comes from."""

    kind: str
    low: float = math.nan          # the acceptance band (seeds, bootstrap, timing)
    high: float = math.nan
    source: str = ""               # how the band was measured
    digits: int | None = None      # exact: compared at this many decimals (the printed ones); None: as stored

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown spread kind {self.kind!r}")

    def describe(self) -> str:
        if self.kind in ("seeds", "bootstrap", "timing"):
            return f"[{_short(self.low)}, {_short(self.high)}]"
        return self.kind

    def accepts(self, reference, value) -> bool | None:
        """Whether ``value`` reproduces ``reference`` (None: this spread cannot tell)."""
        if self.kind == "untestable":
            return None
        if self.kind == "predicate":
            return True
        if self.kind == "exact":
            return _same(reference, value, self.digits)
        value = float(value)
        return bool(self.low - 1e-12 <= value <= self.high + 1e-12)


def _short(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.4g}"


def _same(a, b, digits: int | None) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a).split() == str(b).split()
    a, b = float(a), float(b)
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        return a == b or (math.isnan(a) and math.isnan(b))
    if digits is not None:
        return round(a, digits) == round(b, digits)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def exact(source: str, digits: int | None = None) -> Spread:
    return Spread("exact", source=source, digits=digits)


def predicate(source: str) -> Spread:
    return Spread("predicate", source=source)


def untestable(source: str = ONE_RUN) -> Spread:
    return Spread("untestable", source=source)


def seed_spread(values, log: bool = False) -> Spread:
    """The band a rerun's mean of as many seeds must fall in: mean ± t(n−1)·s·√(2/n) (the difference of two
    independent means of n), on the log scale when ``log``; ``untestable`` with fewer than two seeds."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    if len(x) < 2:
        return untestable()
    x = np.log(x) if log else x
    n = len(x)
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) * math.sqrt(2 / n))
    low, high = x.mean() - half, x.mean() + half
    if log:
        low, high = math.exp(low), math.exp(high)
    scale = " (log scale)" if log else ""
    return Spread("seeds", low, high, f"{n} seeds: mean ± t({n - 1})·s·√(2/{n}){scale}")


def bootstrap_spread(interval: tuple[float, float] | None, what: str) -> Spread:
    """The reference's own 95% bootstrap interval (a forward-pass number: a rerun differs by float noise)."""
    if interval is None or not all(math.isfinite(v) for v in interval):
        return untestable("no interval saved for this number")
    return Spread("bootstrap", float(interval[0]), float(interval[1]), f"95% bootstrap over {what}")


def timing_spread(ratio: float, sd: float, repeats: int, note: str = "") -> Spread:
    """Two medians of ``repeats`` interleaved pruned/unpruned ratios: ratio ± t(n−1)·sd·√(π/n)."""
    if note:
        return untestable(f"timed while the machine was busy ({note})")
    if not (math.isfinite(sd) and repeats >= 2):
        return untestable("the repeats' spread was not saved")
    half = float(stats.t.ppf(0.975, repeats - 1) * sd * math.sqrt(math.pi / repeats))
    return Spread("timing", ratio - half, ratio + half, f"{repeats} repeats: median ± t({repeats - 1})·s·√(π/{repeats})")


def timing_interval(ratio: float, sd: float, repeats: int) -> tuple[float, float] | None:
    """95% interval of one median of ``repeats`` paired ratios: ratio ± t(n−1)·s·√(π/(2n)) (the median's
    asymptotic variance πσ²/(2n); :func:`timing_spread` doubles it for the difference of two medians)."""
    if not (math.isfinite(sd) and repeats >= 2):
        return None
    half = float(stats.t.ppf(0.975, repeats - 1) * sd * math.sqrt(math.pi / (2 * repeats)))
    return ratio - half, ratio + half


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    value: object
    spread: Spread
    holds: bool | None = None     # qualitative part of the claim, evaluated on this run's own tables
    interval: tuple[float, float] | None = None   # 95% interval of this run's value, where its data give one
    null: float | None = None     # the value meaning "no effect" (chance AUC, zero difference), where there is one

    @property
    def detectable(self) -> str:
        """For a null result (the interval contains ``null``): the smallest effect it could have detected."""
        return power.describe(self.interval, self.null)


def top_repetitions(memorization: pd.DataFrame) -> int:
    """The largest canary repetition count with an ``exposure_rN`` column."""
    counts = [int(m.group(1)) for c in memorization.columns if (m := re.fullmatch(r"exposure_r(\d+)", c))]
    counts = [c for c in counts if c > 0]
    if not counts:
        raise PrunePrivError("memorization.csv has no exposure_rN column (no repeated canaries)")
    return max(counts)


# tables that results written before them lack: their claims are skipped
LATER_TABLES = ("pruning_healed.csv",)


def table_files(results_dir: str | Path) -> tuple[str, ...]:
    """The claim tables a results folder should hold: :data:`TABLES`, less the :data:`LATER_TABLES` it lacks."""
    return tuple(n for n in TABLES if n not in LATER_TABLES or (Path(results_dir) / n).is_file())


def load_tables(results_dir: str | Path) -> dict[str, object]:
    """The tables claims are made from; a missing one is an error naming the stage that writes it
    (one of :data:`LATER_TABLES` is left out instead)."""
    results_dir = Path(results_dir)
    tables: dict[str, object] = {}
    for name in table_files(results_dir):
        path = results_dir / name
        if not path.is_file():
            raise PrunePrivError(f"{path} not found: run `prunepriv reproduce` for this profile first")
        tables[name] = json.loads(path.read_text()) if name.endswith(".json") else pd.read_csv(path)
    return tables


def claims_from(results_dir: str | Path) -> list[Claim]:
    """Every claim of the paper, measured from one profile's result tables."""
    return claims(load_tables(results_dir))


def claims(t: dict[str, object]) -> list[Claim]:
    """Every claim of the paper, from the tables of :func:`load_tables` (keyed by file name)."""
    return (_pruning_claims(t) + _latency_claims(t) + _finetune_claims(t) + _memorization_claims(t) + _matched_claims(t)
            + _audit_claims(t) + _federated_claims(t) + _selection_claims(t) + _compression_claims(t)
            + _healing_claims(t))


# --------------------------------------------------------------------------
# helpers over replicated tables

def _runs_of(table: pd.DataFrame, model: str, eps: float) -> pd.DataFrame:
    """The rows of one setting, by replicate (a table written without replicates is replicate 0)."""
    rows = table[(table["model"] == model) & (table["target_epsilon"] == eps)]
    rows = rows if "replicate" in rows else rows.assign(replicate=0)
    return rows.sort_values("replicate")


def _settings(table: pd.DataFrame) -> list[tuple[str, float]]:
    return list(dict.fromkeys(zip(table["model"], table["target_epsilon"])))


def _seeded(values: list[float], log: bool, single_interval=None) -> tuple[float, Spread, tuple[float, float] | None]:
    """Mean of a setting's per-seed values, its spread, and its interval (across seeds; with one seed the
    run's own interval, ``single_interval``)."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    if not finite:
        return math.nan, untestable("no value"), None
    value = mean_over(finite, log)
    if len(finite) > 1:
        interval = log_t_interval(finite) if log else t_interval(finite)
        return value, seed_spread(finite, log), interval
    return value, untestable(), single_interval


def _is_inf(eps) -> bool:
    return math.isinf(float(eps))


# --------------------------------------------------------------------------
# stages 01–02

def _pruning_claims(t) -> list[Claim]:
    chosen = t["pruned_layers.json"]
    k, n = chosen["removed"], chosen["num_layers"]
    table = t["pruning.csv"]
    row = table[(table["strategy"] == chosen["strategy"]) & (table["removed"] == k)].iloc[0]
    full = table[table["removed"] == 0].iloc[0]
    last = table[(table["strategy"] == "last") & (table["removed"] == k)]
    patients = "held-out patients"
    claims = [
        Claim("pruning.layers", f"{chosen['strategy']} similarity removes these {k} of {n} layers",
              " ".join(map(str, chosen["layers"])), exact("a deterministic choice from the similarity, measured in "
                                                           "fp32 on every machine")),
        Claim("pruning.perplexity.unpruned", "perplexity of the unpruned model on held-out private notes",
              float(full["perplexity_private"]), bootstrap_spread(row_interval(full, "perplexity_private"), patients),
              interval=row_interval(full, "perplexity_private")),
        Claim("pruning.perplexity.pruned", f"perplexity after removing {k} layers, before healing",
              float(row["perplexity_private"]), bootstrap_spread(row_interval(row, "perplexity_private"), patients),
              bool(row["perplexity_private"] > full["perplexity_private"]), row_interval(row, "perplexity_private")),
        Claim("pruning.parameters", f"parameter fraction left after removing {k} layers",
              float(row["parameter_fraction"]), exact("parameter counting")),
    ]
    claims += _choice_support_claims(chosen)
    if len(last):
        worse = last.iloc[0]
        claims.append(Claim("pruning.last.perplexity", f"perplexity after removing the last {k} layers instead "
                            "(similarity-chosen layers lose less)", float(worse["perplexity_private"]),
                            bootstrap_spread(row_interval(worse, "perplexity_private"), patients),
                            bool(worse["perplexity_private"] > row["perplexity_private"]),
                            row_interval(worse, "perplexity_private")))
    return claims


def _choice_support_claims(chosen: dict) -> list[Claim]:
    """Issue 29, item 7: the bootstrap of the calibration sequences supports the chosen set when each
    chosen layer is chosen in most draws and no unchosen layer more often than a chosen one (the set is
    the draws' majority vote). Value: the smallest frequency among the chosen layers."""
    stability = chosen.get("choice_stability") or {}
    frequency = stability.get("layer_frequency")
    if not frequency:
        return []
    layers = set(chosen["layers"])
    inside = [f for i, f in enumerate(frequency) if i in layers]
    outside = [f for i, f in enumerate(frequency) if i not in layers] or [0.0]
    holds = min(inside) > 0.5 and min(inside) >= max(outside)
    return [Claim("pruning.layers.supported", f"smallest share of {stability['draws']} bootstrap draws of the "
                  "calibration sequences that choose a removed layer (supported: each above ½, none unchosen "
                  f"above it; the exact set recurs in {float(stability['same_set']):.0%})", float(min(inside)),
                  predicate("the bootstrap's majority vote"), holds)]


def _latency_claims(t) -> list[Claim]:
    claims = []
    for row in t["latency.csv"].to_dict("records"):
        if row["removed"] == 0:
            continue
        note = str(row.get("timing_note", "") or "") if isinstance(row.get("timing_note", ""), str) else ""
        for phase in ("prefill", "decode"):
            ratio = float(row[f"{phase}_ratio"])
            spread = timing_spread(ratio, float(row.get(f"{phase}_ratio_sd", math.nan)),
                                   int(row.get(f"{phase}_repeats", 0) or 0), note)
            claims.append(Claim(f"latency.{phase}.k{int(row['removed'])}",
                                f"{phase} time with {int(row['removed'])} layers removed, relative to the unpruned model",
                                ratio, spread, ratio < 1.0 if spread.kind != "untestable" else None,
                                timing_interval(ratio, float(row.get(f"{phase}_ratio_sd", math.nan)),
                                                int(row.get(f"{phase}_repeats", 0) or 0))))
    return claims


# --------------------------------------------------------------------------
# stage 03

def _finetune_claims(t) -> list[Claim]:
    raw = t["finetune.csv"]
    claims = []
    for eps in sorted({e for e in raw["target_epsilon"] if not _is_inf(e)}, reverse=True):
        rows = raw[raw["target_epsilon"] == eps]
        claims.append(Claim(f"privacy.epsilon.eps{epsilon_label(eps)}",
                            f"accountant ε (RDP, δ = {rows['delta'].iloc[0]:.2g}) of every run targeting ε = {eps:g}",
                            float(rows["epsilon_rdp"].max()),
                            exact("accountant arithmetic on (σ, q, steps), the σ found by a deterministic search", 4),
                            bool((rows["epsilon_rdp"] <= eps * (1 + 1e-6)).all())))
    for model, eps in _settings(raw):
        rows = _runs_of(raw, model, eps)
        if is_matched(model):
            continue
        value, spread, interval = _seeded(list(rows["perplexity_private"]), True,
                                          row_interval(rows.iloc[0], "perplexity_private"))
        claims.append(Claim(f"finetune.perplexity.{model}.eps{epsilon_label(eps)}",
                            f"{model} model fine-tuned at {epsilon_text(eps)}: held-out perplexity "
                            f"({len(rows)} run(s))", value, spread,
                            bool(value < float(rows["perplexity_private_before"].iloc[0])), interval))
        if not _is_inf(eps):
            share, span, n = recovered_share(raw, model, eps)
            if math.isfinite(share):
                shares = _per_seed_shares(raw, model, eps)
                claims.append(Claim(f"finetune.recovered.{model}.eps{epsilon_label(eps)}",
                                    f"{model} model at ε = {eps:g}: share of the non-private runs' held-out "
                                    f"log-perplexity gain recovered ({n} paired run(s); aim ≥ 0.5)", share,
                                    seed_spread(shares), None, span))
    worst = raw.groupby(["model", "target_epsilon"], sort=False)["loss_spike"].max() if "loss_spike" in raw else {}
    for (model, eps), spike in dict(worst).items():        # the worst of a setting's runs
        if math.isfinite(spike):
            claims.append(Claim(f"finetune.stable.{model}.eps{epsilon_label(eps)}",
                                f"{model} model at {epsilon_text(eps)}: largest smoothed loss over the lowest before "
                                f"it, worst run (no spike if < {SPIKE:g})", float(spike),
                                predicate("a bound on every run's curve"), spike < SPIKE))
    for model in [m for m in dict.fromkeys(raw["model"]) if not is_matched(m)]:
        rows = _runs_of(raw, model, math.inf)
        if len(rows):
            ratios = list(rows["perplexity_private_before"] / rows["perplexity_private"])
            value, spread, interval = _seeded(ratios, True)
            claims.append(Claim(f"finetune.healing.{model}", f"non-private fine-tuning of the {model} model: held-out "
                                "perplexity before / after", value, spread, bool(value > 1), interval, null=1.0))
    return claims


def _per_seed_shares(raw: pd.DataFrame, model: str, eps: float) -> list[float]:
    shares = []
    for r in sorted(set(_runs_of(raw, model, eps)["replicate"]) & set(_runs_of(raw, model, math.inf)["replicate"])):
        share, _, _ = recovered_share(raw[raw["replicate"] == r], model, eps)
        shares.append(share)
    return shares


# --------------------------------------------------------------------------
# stage 05

def _memorization_claims(t) -> list[Claim]:
    memo, exposure = t["memorization.csv"], t["canary_exposure.csv"]
    top = top_repetitions(memo)
    excess = f"exposure_excess_r{top}"
    claims = []
    for model, eps in _settings(memo):
        if is_matched(model):                              # compared with their DP twin in _matched_claims
            continue
        rows = _runs_of(memo, model, eps)
        per_canary = _runs_of(exposure, model, eps)
        trained = per_canary[per_canary["repetitions"] == top]
        control = per_canary[per_canary["repetitions"] == 0]
        value, spread, interval = _seeded(list(rows[excess]), False, _canary_interval(trained["excess"]))
        p = attacks.permutation_p(trained["excess"], control["excess"], trained.get("replicate"),
                                  control.get("replicate"), draws=4000)
        above = bool(p < 0.05 and trained["excess"].mean() > control["excess"].mean())
        tag = f"{model}.eps{epsilon_label(eps)}"
        claims.append(Claim(f"memorization.exposure.{tag}",
                            f"{model}, {epsilon_text(eps)}: exposure of {top}× canaries in excess of each one's "
                            f"untuned exposure (bits), against the never-trained canaries' excess: stratified "
                            f"permutation p = {p:.2g}" + ("; memorized if p < 0.05" if _is_inf(eps) else ""),
                            value, spread, above if _is_inf(eps) else None, interval, null=0.0))
        auc, spread, interval = _seeded(list(rows["mia_auc_reference"]), False,
                                        row_interval(rows.iloc[0], "mia_auc_reference"))
        control = bool(interval[0] > 0.5) if _is_inf(eps) and interval is not None else None
        claims.append(Claim(f"memorization.mia.{tag}", f"{model}, {epsilon_text(eps)}: reference-calibrated "
                            "membership AUC (chance 0.5)" + ("; positive control: the attack sees membership "
                                                             "if the interval is above 0.5" if _is_inf(eps) else ""),
                            auc, spread, control, interval, null=0.5))
        if not _is_inf(eps):
            claims += _reduction(memo, exposure, model, eps, top)
    if "mia_auc_untuned" in memo:
        for model in [m for m in dict.fromkeys(memo["model"]) if not is_matched(m)]:
            row = memo[memo["model"] == model].iloc[0]
            interval = row_interval(row, "mia_auc_untuned")
            claims.append(Claim(f"memorization.mia.untuned.{model}", f"control: loss-attack AUC on the untuned {model} "
                                "model, which saw neither members nor non-members (0.5: one distribution)",
                                float(row["mia_auc_untuned"]), bootstrap_spread(interval, "members and non-members"),
                                None if interval is None else bool(interval[0] <= 0.5 <= interval[1]), interval,
                                null=0.5))
    return claims


def _canary_interval(values) -> tuple[float, float] | None:
    """Bootstrap interval of a mean over canaries (one run), ``None`` with fewer than two."""
    low, high = attacks.mean_interval(values)
    return (low, high) if math.isfinite(low) else None


def _reduction(memo: pd.DataFrame, exposure: pd.DataFrame, model: str, eps: float, top: int) -> list[Claim]:
    """Non-private minus DP excess exposure of ``top``× canaries, paired by replicate (the two runs of a
    replicate share its canaries): across seeds, or over those canaries with one seed."""
    excess = f"exposure_excess_r{top}"
    dp, nonprivate = (_runs_of(memo, model, e).set_index("replicate")[excess] for e in (eps, math.inf))
    common = sorted(set(dp.index) & set(nonprivate.index))
    if not common:
        return []
    diffs = [float(nonprivate[r] - dp[r]) for r in common]
    if len(diffs) > 1:
        interval, spread = t_interval(diffs), seed_spread(diffs)
    else:
        a = _runs_of(exposure, model, math.inf)
        b = _runs_of(exposure, model, eps)
        paired = (a[a["repetitions"] == top].set_index(["replicate", "canary_id"])["excess"]
                  - b[b["repetitions"] == top].set_index(["replicate", "canary_id"])["excess"]).dropna()
        interval, spread = _canary_interval(paired), untestable()
    value = float(np.mean(diffs))
    holds = None if interval is None or not all(map(math.isfinite, interval)) else bool(interval[0] > 0)
    return [Claim(f"memorization.exposure.reduction.{model}.eps{epsilon_label(eps)}",
                  f"{model}: excess exposure of {top}× canaries without DP minus at ε = {eps:g} (bits; > 0 with an "
                  "interval excluding 0: DP memorizes less)", value, spread, holds,
                  tuple(interval) if interval is not None else None, null=0.0)]


def _matched_claims(t) -> list[Claim]:
    """Memorization at equal utility (:mod:`prunepriv.report.matched`): each utility-matched run's perplexity
    against its DP twin's, and the DP run's exposure and membership AUC minus the matched run's."""
    runs = t["finetune.csv"]
    if "matched_epsilon" not in runs:
        return []
    claims = []
    top = top_repetitions(t["memorization.csv"])
    for model in [m for m in dict.fromkeys(runs["model"]) if is_matched(m)]:
        base = base_model(model)
        mine = _runs_of(runs, model, math.inf)
        eps = float(mine["matched_epsilon"].iloc[0])
        dp = _runs_of(runs, base, eps).set_index("replicate")["perplexity_private"]
        twin = mine.set_index("replicate")["perplexity_private"]
        ratios = [float(twin[r] / dp[r]) for r in sorted(set(dp.index) & set(twin.index))]
        value, spread, interval = _seeded(ratios, True)
        claims.append(Claim(f"finetune.matched.{base}", f"{base} model, non-private, stopped at the held-out "
                            f"perplexity of its run at ε = {eps:g}: its perplexity over the DP run's (1: equal "
                            "utility; a measurement, since an interval that covers 1 does not show equality)",
                            value, spread, None, interval, null=1.0))
        value, interval = matched.exposure_difference(t["canary_exposure.csv"], base, model, eps, top)
        claims.append(Claim(f"memorization.matched.{base}.exposure", f"{base}, ε = {eps:g} minus its utility-matched "
                            f"non-private run: excess exposure of {top}× canaries (bits; < 0: DP memorizes less at "
                            "equal utility)", value, _matched_spread(t["canary_exposure.csv"], base, model, eps, top),
                            None, interval, null=0.0))
        value, interval = matched.auc_difference(t["membership_inference.csv"], base, model, eps)
        claims.append(Claim(f"memorization.matched.{base}.mia", f"{base}, ε = {eps:g} minus its utility-matched "
                            "non-private run: reference-calibrated membership AUC", value,
                            _matched_auc_spread(t["membership_inference.csv"], base, model, eps), None, interval,
                            null=0.0))
    return claims


def _matched_spread(exposure: pd.DataFrame, base: str, model: str, eps: float, top: int) -> Spread:
    a, b = _runs_of(exposure, base, eps), _runs_of(exposure, model, math.inf)
    seeds = sorted(set(a["replicate"]) & set(b["replicate"]))
    return seed_spread([matched.excess_top(a[a["replicate"] == r], top) - matched.excess_top(b[b["replicate"] == r], top)
                        for r in seeds])


def _matched_auc_spread(mia: pd.DataFrame, base: str, model: str, eps: float) -> Spread:
    a = _runs_of(mia, base, eps)
    b = _runs_of(mia, model, math.inf)
    a, b = a[a["attack"] == "reference"], b[b["attack"] == "reference"]
    merged = a.merge(b, on="replicate", suffixes=("_dp", "_matched"))
    return seed_spread(list(merged["auc_dp"] - merged["auc_matched"]))


def _audit_claims(t) -> list[Claim]:
    audit = t["audit.csv"]
    private = audit[~audit["target_epsilon"].map(_is_inf)]
    accountant = private[["epsilon_rdp_at_audit_delta", "epsilon_prv_at_audit_delta"]].min(axis=1)
    worst = float((private["epsilon_lower_bound"] - accountant).max()) if len(private) else math.nan
    ceiling = float(audit["epsilon_attainable"].max())
    claims = [
        Claim("audit.below_accountant", "every one-run audit lower bound ≤ its accountant ε (largest bound − ε "
              "shown; ≤ 0 holds)", worst, predicate("a bound on every run"), bool(worst <= 1e-9) if len(private) else None),
        Claim("audit.attainable", f"the largest lower bound {int(audit['audit_canaries'].iloc[0])} audit canaries can "
              "give (every guess correct): an accountant ε above it cannot be tested", ceiling,
              exact("a function of the canary count, δ and the confidence", 4)),
    ]
    censored = predicate("a bound censored at 0 (0 whenever too few guesses are correct): its qualitative part "
                         "is compared, not its value")
    for model, eps in _settings(audit):
        if is_matched(model):                              # compared with their DP twin in _matched_claims
            continue
        rows = _runs_of(audit, model, eps)
        value, _, interval = _seeded(list(rows["epsilon_lower_bound"]), False)
        spread = censored
        tag = f"{model}.eps{epsilon_label(eps)}"
        if _is_inf(eps):
            text, holds = (f"{model}, non-private: audit lower bound on ε (positive control: above 0 in every run "
                           "means the audit sees memorization)", bool((rows["epsilon_lower_bound"] > 0).all()))
        else:
            accountant = rows[["epsilon_rdp_at_audit_delta", "epsilon_prv_at_audit_delta"]].min(axis=1)
            text, holds = (f"{model}, ε = {eps:g}: audit lower bound on ε, at most the accountant's "
                           f"({float(accountant.iloc[0]):.3g} at the audit's δ) in every run",
                           bool((rows["epsilon_lower_bound"] <= accountant + 1e-9).all()))
        claims.append(Claim(f"audit.bound.{tag}", text, value, spread, holds, interval))
        if not _is_inf(eps) and "verdict" in rows:
            verdicts = " ".join(sorted(set(rows["verdict"])))
            claims.append(Claim(f"audit.verdict.{tag}", f"{model}, ε = {eps:g}: what the audit can say of its "
                                "accountant (holds: could have failed and did not; untestable: the accountant's ε is "
                                "above the attainable bound, or the non-private control is blind)", verdicts,
                                exact("the accountant's ε against the attainable bound"), "fails" not in verdicts))
    return claims


# --------------------------------------------------------------------------
# stage 06

FP32_DECISION = "a decision computed in fp32 from the same records"


def _federated_claims(t) -> list[Claim]:
    table, summary = t["federated.csv"], t["federated.json"]
    layers = table[table["method"].str.startswith("layer removal")].set_index("source")
    wanda = table[table["method"].str.startswith("Wanda")].set_index("source")
    clients = [s for s in layers.index if s.startswith("client")]
    diff = float(summary["similarity_max_abs_difference"])
    patients = "held-out patients"
    return [
        Claim("federated.similarity.difference", "token-weighted federated averaging reproduces the centralized "
              "similarity matrix (largest absolute difference; holds below 1e-4, float32 rounding)", diff,
              predicate("float32 rounding of one sum in two orders"), bool(diff < 1e-4)),
        Claim("federated.layers", "layers the federated server removes (equal to the centralized choice)",
              str(layers.loc["federated", "removed"]), exact(FP32_DECISION),
              bool(layers.loc["federated", "removed"] == layers.loc["centralized", "removed"])),
        Claim("federated.layers.local.agreement", f"mean Jaccard of the {len(clients)} local-only layer choices "
              "with the centralized choice", float(layers.loc[clients, "agreement"].mean()), exact(FP32_DECISION, 2)),
        Claim("federated.wanda.agreement", "FedPrLLM layer-wise count-aggregated Wanda mask: Jaccard of pruned weights "
              "with the centralized mask (above every local-only mask's)", float(wanda.loc["federated", "agreement"]),
              exact(FP32_DECISION, 3),
              bool(wanda.loc["federated", "agreement"] >= wanda.loc[clients, "agreement"].max())),
        Claim("federated.wanda.local.agreement", "mean Jaccard of local-only Wanda masks with the centralized mask",
              float(wanda.loc[clients, "agreement"].mean()), exact(FP32_DECISION, 3)),
        Claim("federated.wanda.perplexity", "held-out perplexity with the federated Wanda mask, before fine-tuning",
              float(wanda.loc["federated", "perplexity_private"]),
              bootstrap_spread(row_interval(wanda.loc["federated"], "perplexity_private"), patients),
              interval=row_interval(wanda.loc["federated"], "perplexity_private")),
        Claim("federated.wanda.perplexity.centralized", "held-out perplexity with the centralized Wanda mask",
              float(wanda.loc["centralized", "perplexity_private"]),
              bootstrap_spread(row_interval(wanda.loc["centralized"], "perplexity_private"), patients),
              interval=row_interval(wanda.loc["centralized"], "perplexity_private")),
    ]


def _selection_claims(t) -> list[Claim]:
    draws, chosen, info = t["private_selection_draws.csv"], t["private_selection.csv"], t["private_selection.json"]
    agreement = draws.groupby("selection_epsilon")["agreement"].mean()
    finite = sorted(e for e in agreement.index if math.isfinite(e))
    seeded = exact("seeded noise draws on statistics computed in fp32", 2)
    claims = [Claim(f"selection.agreement.eps{epsilon_label(e)}", f"private selection at selection ε = {e:g}: mean "
                    "Jaccard with the non-private choice over the noise draws", float(agreement[e]), seeded)
              for e in finite]
    if len(finite) > 1:
        low, high = float(agreement[finite[0]]), float(agreement[finite[-1]])
        claims.append(Claim("selection.agreement.grows", f"agreement grows with the selection ε (at ε = {finite[-1]:g} "
                            f"minus at ε = {finite[0]:g})", high - low, predicate("an ordering"), bool(high >= low)))
    claims.append(Claim("selection.public.agreement", "the choice made from public text alone: Jaccard with the "
                        "non-private choice", float(info["public_reference_agreement"]), seeded))
    for row in chosen.to_dict("records"):
        interval = row_interval(row, "perplexity_private")
        if not math.isfinite(row["selection_epsilon"]):
            claims.append(Claim("selection.perplexity.epsinf", "non-private selection, DP fine-tuned at "
                                f"ε = {row['finetune_epsilon']:g}: held-out perplexity", float(row["perplexity_private"]),
                                untestable(), interval=interval))
            continue
        tag = epsilon_label(row["selection_epsilon"])
        e2e, sel, tune = row["end_to_end_epsilon_rdp"], row["selection_epsilon_rdp"], row["finetune_epsilon_rdp"]
        claims.append(Claim(f"selection.endtoend.eps{tag}", f"end-to-end ε (RDP, δ = {row['delta']:.2g}) of selection "
                            f"at ε = {row['selection_epsilon']:g} then DP-LoRA at ε = {row['finetune_epsilon']:g}, "
                            "composed by one accountant (between the larger and the sum)", float(e2e),
                            exact("accountant arithmetic", 4), bool(max(sel, tune) <= e2e <= sel + tune + 1e-9)))
        claims.append(Claim(f"selection.perplexity.eps{tag}", f"privately selected (ε = {row['selection_epsilon']:g}) "
                            f"and DP fine-tuned (ε = {row['finetune_epsilon']:g}) model: held-out perplexity",
                            float(row["perplexity_private"]), untestable(), interval=interval))
    return claims


def compression_slug(name: str) -> str:
    """``magnitude 50%`` → ``magnitude``; ``layer removal (k=15)`` → ``layers``."""
    first = name.split()[0].lower()
    return "layers" if first == "layer" else first


def _compression_claims(t) -> list[Claim]:
    table = t["compression_baselines.csv"]
    eps = float(table["target_epsilon"].iloc[0])
    claims = []
    for row in table.to_dict("records"):
        slug = compression_slug(row["model"])
        claims.append(Claim(f"compression.perplexity.{slug}", f"{row['model']}, DP-LoRA at ε = {eps:g}: held-out "
                            "perplexity", float(row["perplexity_private"]), untestable(),
                            interval=row_interval(row, "perplexity_private")))
        claims.append(Claim(f"compression.mia.{slug}", f"{row['model']}, DP-LoRA at ε = {eps:g}: reference-calibrated "
                            "membership AUC (chance 0.5)", float(row["mia_auc_reference"]), untestable(),
                            interval=row_interval(row, "mia_auc_reference"), null=0.5))
        if slug == "dense":
            continue
        claims.append(Claim(f"compression.parameters.{slug}", f"{row['model']}: non-zero parameters relative to dense",
                            float(row["parameter_fraction"]), exact("parameter counting")))
        if slug in ("layers", "dpkd"):
            text, holds = "decode time relative to dense (removing layers is faster)", row["decode_ratio"] < 1.0
        else:
            text, holds = ("decode time relative to dense (dense kernels gain nothing from zeros: ≥ 0.85)",
                           row["decode_ratio"] >= 0.85)
        note = row.get("timing_note", "")
        spread = timing_spread(float(row["decode_ratio"]), float(row.get("decode_ratio_sd", math.nan)),
                               int(row.get("decode_repeats", 0) or 0), note if isinstance(note, str) else "")
        claims.append(Claim(f"compression.decode.{slug}", f"{row['model']}: {text}", float(row["decode_ratio"]),
                            spread, bool(holds) if spread.kind != "untestable" else None))
    by_slug = {compression_slug(r["model"]): r for r in table.to_dict("records")}
    if "wanda" in by_slug and "layers" in by_slug:
        ratio = float(by_slug["layers"]["perplexity_private"] / by_slug["wanda"]["perplexity_private"])
        claims.append(Claim("compression.layers.over.wanda", "at a matched parameter count, held-out perplexity after "
                            "DP-LoRA of layer removal divided by Wanda's (a measurement of one run each)", ratio,
                            untestable()))
    if "dpkd" in by_slug and "layers" in by_slug:
        ratio = float(by_slug["dpkd"]["perplexity_private"] / by_slug["layers"]["perplexity_private"])
        claims.append(Claim("compression.dpkd.over.layers", "same student, same total ε: held-out perplexity of DPKD "
                            "divided by plain DP-LoRA's (a measurement of one run each)", ratio, untestable()))
    audited = table.dropna(subset=["audit_lower_bound"]) if "audit_lower_bound" in table else table.iloc[:0]
    if len(audited):
        worst = float((audited["audit_lower_bound"] - audited["audit_epsilon_rdp"]).max())
        claims.append(Claim("compression.audit.below_accountant", "every compressed model's audit lower bound ≤ its "
                            "accountant ε (largest bound − ε; ≤ 0 holds)", worst, predicate("a bound on every run"),
                            bool(worst <= 1e-9)))
    return claims


def best_other(healed: pd.DataFrame, paper_strategy: str) -> pd.Series | None:
    """The row of ``tab:pruning-healed`` other than the paper's strategy with the lowest perplexity after
    healing (``None`` if there is none)."""
    others = healed[(healed["strategy"] != paper_strategy) & healed["perplexity_private"].map(math.isfinite)]
    return None if not len(others) else others.loc[others["perplexity_private"].idxmin()]


def _healing_claims(t) -> list[Claim]:
    """Each layer-removal strategy at the paper's depth after DP healing (notebook 06), and each other strategy
    against the paper's on the same patients (a paired interval; one run each)."""
    if "pruning_healed.csv" not in t:
        return []
    table, chosen = t["pruning_healed.csv"], t["pruned_layers.json"]
    claims = []
    for row in table.to_dict("records"):
        claims.append(Claim(f"healing.perplexity.{row['strategy']}", f"{row['strategy']}: {int(row['removed'])} layers "
                            f"removed, DP-LoRA at ε = {row['target_epsilon']:g}: held-out perplexity",
                            float(row["perplexity_private"]), untestable(),
                            interval=row_interval(row, "perplexity_private")))
        if row["strategy"] != chosen["strategy"] and math.isfinite(row.get("ratio_to_paper", math.nan)):
            interval = row_interval(row, "ratio_to_paper")
            claims.append(Claim(f"healing.{row['strategy']}.over.paper", f"after DP healing, held-out perplexity of "
                                f"{row['strategy']} over {chosen['strategy']}'s on the same patients (paired interval; "
                                "1: no difference)", float(row["ratio_to_paper"]), untestable(), None, interval,
                                null=1.0))
    return claims


# --------------------------------------------------------------------------
# comparison

VERDICTS = ("reproduced", "differs", "fails", "missing", "extra", "untestable")


def verdict(ref: Claim | None, rep: Claim | None) -> str:
    """One claim's verdict: ``missing`` / ``extra`` (a claim of one run only), ``fails`` (its qualitative part
    held in the reference and not in the rerun), ``differs`` (the other way round, or the value outside the
    reference's band), ``untestable`` (the reference measured no spread, or the rerun timed under load),
    else ``reproduced``."""
    if rep is None:
        return "missing"
    if ref is None:
        return "extra"
    if rep.spread.kind == "untestable" and ref.spread.kind == "timing":
        return "untestable"                          # a rerun timed under load says nothing, either way
    if ref.holds is not None and rep.holds is not None and ref.holds != rep.holds:
        return "fails" if ref.holds else "differs"
    accepted = ref.spread.accepts(ref.value, rep.value)
    if accepted is None:
        return "untestable"
    return "reproduced" if accepted else "differs"


def compare(reference: list[Claim], reproduced: list[Claim]) -> pd.DataFrame:
    """One row per claim of either run: values, the reference's band and its source, verdict."""
    mine, theirs = {c.id: c for c in reproduced}, {c.id: c for c in reference}
    ids = list(theirs) + [i for i in mine if i not in theirs]
    rows = []
    for ident in ids:
        ref, rep = theirs.get(ident), mine.get(ident)
        shown = ref or rep
        rows.append({"claim": ident, "text": shown.text, "reference": None if ref is None else ref.value,
                     "reproduced": None if rep is None else rep.value,
                     "interval": format_interval(None if rep is None else rep.interval),
                     "detectable": "" if rep is None else rep.detectable,
                     "band": "" if ref is None else ref.spread.describe(),
                     "spread": "" if ref is None else ref.spread.kind,
                     "source": "" if ref is None else ref.spread.source,
                     "verdict": verdict(ref, rep)})
    return pd.DataFrame(rows)


def format_value(value) -> str:
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def format_interval(interval: tuple[float, float] | None) -> str:
    """``[low, high]``, or empty where the claim's data give no interval."""
    return "" if interval is None else f"[{format_value(float(interval[0]))}, {format_value(float(interval[1]))}]"


def claims_table(found: list[Claim]) -> pd.DataFrame:
    """The claims of one run as ``claims.csv``: value, its 95% interval where the data give one, the band a
    rerun must land in (``band``), what kind of spread set it (``spread``) and how (``source``), and whether
    the qualitative part holds."""
    return pd.DataFrame([{"claim": c.id, "text": c.text, "value": format_value(c.value),
                          "interval": format_interval(c.interval), "detectable": c.detectable,
                          "band": c.spread.describe(), "spread": c.spread.kind, "source": c.spread.source,
                          "holds": c.holds} for c in found])


def failing(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`claims_table` whose qualitative part does not hold (``None`` means: it has none)."""
    return table[table["holds"] == False]  # noqa: E712 - None must not count as failing
