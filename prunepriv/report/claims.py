"""The paper's claims, read from a profile's result tables, and their comparison with a reference run.

Each :class:`Claim` carries the value measured by one run, the tolerance within
which another run counts as reproducing it (with the reason for that width),
and, where the claim is qualitative ("pruning cuts latency", "the audit stays
below the accountant"), whether it holds in that run. ``prunepriv verify``
and notebook ``07_paper`` (which writes the paper's numbers) both use
:func:`claims`, so the paper and the check can never disagree.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from prunepriv.attacks import probes as attacks
from prunepriv.errors import PrunePrivError
from prunepriv.pipeline.registry import claim_files
from prunepriv.privacy.record import SPIKE, base_model, is_matched
from prunepriv.privacy.specs import epsilon_label, epsilon_text
from prunepriv.report import matched, power
from prunepriv.report.seeds import collapse_replicates, replicated, row_interval

TABLES = claim_files()   # what stage 07 reads, from the registry


@dataclass(frozen=True)
class Tolerance:
    kind: str        # "rel", "abs", "overlap" (share of a layer set) or "none" (the predicate alone decides)
    amount: float
    why: str

    def describe(self) -> str:
        if self.kind == "rel":
            return f"±{self.amount * 100:g}%"
        if self.kind == "abs":
            return f"±{self.amount:g}"
        if self.kind == "overlap":
            return f"≥{self.amount:.0%} shared"
        return "predicate"

    def accepts(self, reference, reproduced) -> bool:
        if self.kind == "none":
            return True
        if self.kind == "overlap":
            ref, rep = set(str(reference).split()), set(str(reproduced).split())
            return len(ref & rep) >= self.amount * max(len(ref), 1)
        reference, reproduced = float(reference), float(reproduced)
        if math.isinf(reference) or math.isinf(reproduced):
            return reference == reproduced
        bound = self.amount * abs(reference) if self.kind == "rel" else self.amount
        return abs(reproduced - reference) <= bound + 1e-12


# Widths and their reasons (REPRODUCE.md repeats them).
EXACT_MATH = Tolerance("rel", 1e-3, "accountant arithmetic on (σ, q, steps): deterministic up to the search for σ")
FORWARD = Tolerance("rel", 0.02, "forward passes only: float reductions differ across CPUs, thread counts and GPUs")
TRAINED = Tolerance("rel", 0.10, "22 optimiser steps amplify float differences; another device draws other batches")
TRAINED_DP = Tolerance("rel", 0.15, "as above, plus DP noise: another device's generator draws other noise")
TIMING = Tolerance("abs", 0.10, "a ratio of times taken in one run; thread count and device change it a little")
LAYERS = Tolerance("overlap", 0.75, "near-tied adjacent similarities can swap one layer on another device")
EXPOSURE = Tolerance("abs", 1.5, "4 canaries per repetition group: single-group means move by about a bit")
AUC = Tolerance("abs", 0.15, "40 members vs 40 non-members: the AUC's standard error is about 0.065")
AGREEMENT = Tolerance("abs", 0.15, "a share of layers: one near-tied layer swapping moves it by about 1/k")
MASKS = Tolerance("abs", 0.02, "share of millions of pruned weights: only near-tied scores can swap")
PREDICATE = Tolerance("none", 0.0, "a qualitative claim; the verdict is whether it holds")


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    value: object
    tolerance: Tolerance
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
    if not counts:
        raise PrunePrivError("memorization.csv has no exposure_rN column (no repeated canaries)")
    return max(counts)


# tables that results written before them lack (the committed reference among them): their claims are skipped
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


def _pruning_claims(t) -> list[Claim]:
    chosen = t["pruned_layers.json"]
    k, n = chosen["removed"], chosen["num_layers"]
    table = t["pruning.csv"]
    row = table[(table["strategy"] == chosen["strategy"]) & (table["removed"] == k)].iloc[0]
    full = table[table["removed"] == 0].iloc[0]
    last = table[(table["strategy"] == "last") & (table["removed"] == k)]
    claims = [
        Claim("pruning.layers", f"{chosen['strategy']} similarity removes these {k} of {n} layers",
              " ".join(map(str, chosen["layers"])), LAYERS),
        Claim("pruning.perplexity.unpruned", "perplexity of the unpruned model on held-out private notes",
              float(full["perplexity_private"]), FORWARD),
        Claim("pruning.perplexity.pruned", f"perplexity after removing {k} layers, before healing",
              float(row["perplexity_private"]), FORWARD, bool(row["perplexity_private"] > full["perplexity_private"])),
        Claim("pruning.parameters", f"parameter fraction left after removing {k} layers",
              float(row["parameter_fraction"]), Tolerance("rel", 1e-6, "parameter counting is exact")),
    ]
    if len(last):
        worse = float(last.iloc[0]["perplexity_private"])
        claims.append(Claim("pruning.last.perplexity", f"perplexity after removing the last {k} layers instead "
                            "(similarity-chosen layers lose less)", worse, PREDICATE,
                            bool(worse > row["perplexity_private"])))
    return claims


def _latency_claims(t) -> list[Claim]:
    claims = []
    for row in t["latency.csv"].itertuples():
        if row.removed == 0:
            continue
        for phase in ("prefill", "decode"):
            ratio = float(getattr(row, f"{phase}_ratio"))
            claims.append(Claim(f"latency.{phase}.k{row.removed}",
                                f"{phase} time with {row.removed} layers removed, relative to the unpruned model",
                                ratio, TIMING, ratio < 1.0))
    return claims


def _finetune_claims(t) -> list[Claim]:
    runs = collapse_replicates(t["finetune.csv"], ["perplexity_private"])
    spread = "across seeds" if replicated(t["finetune.csv"]) else "bootstrap over held-out patients"
    claims = []
    for eps in sorted({e for e in runs["target_epsilon"] if not math.isinf(e)}, reverse=True):
        row = runs[runs["target_epsilon"] == eps].iloc[0]
        claims.append(Claim(f"privacy.epsilon.eps{epsilon_label(eps)}",
                            f"accountant ε (RDP, δ = {row['delta']:.2g}) of the runs targeting ε = {eps:g}",
                            float(row["epsilon_rdp"]), EXACT_MATH, bool(row["epsilon_rdp"] <= eps)))
    for row in runs.itertuples():
        private = not math.isinf(row.target_epsilon)
        claims.append(Claim(f"finetune.perplexity.{row.model}.eps{epsilon_label(row.target_epsilon)}",
                            f"{row.model} model fine-tuned at {epsilon_text(row.target_epsilon)}: held-out perplexity "
                            f"(interval: {spread})",
                            float(row.perplexity_private), TRAINED_DP if private else TRAINED,
                            bool(row.perplexity_private < row.perplexity_private_before),
                            row_interval(row, "perplexity_private")))
    raw = t["finetune.csv"]
    worst = raw.groupby(["model", "target_epsilon"], sort=False)["loss_spike"].max() if "loss_spike" in raw else {}
    for (model, eps), spike in dict(worst).items():        # the worst of a setting's runs
        if math.isfinite(spike):
            claims.append(Claim(f"finetune.stable.{model}.eps{epsilon_label(eps)}",
                                f"{model} model at {epsilon_text(eps)}: largest step loss over the lowest before "
                                f"it, worst run (no spike if < {SPIKE:g})", float(spike), PREDICATE, spike < SPIKE))
    pruned = runs[(runs["model"] == "pruned") & runs["target_epsilon"].map(math.isinf)]
    if len(pruned):
        row = pruned.iloc[0]
        claims.append(Claim("finetune.healing.pruned", "non-private fine-tuning heals the pruned model "
                            "(perplexity before / after)", float(row["perplexity_private_before"] / row["perplexity_private"]),
                            TRAINED, bool(row["perplexity_private_before"] > row["perplexity_private"])))
    return claims


def _memorization_claims(t) -> list[Claim]:
    top = top_repetitions(t["memorization.csv"])
    table = t["memorization.csv"].assign(exposure_excess_top=lambda f: f[f"exposure_r{top}"] - f["exposure_heldout"])
    table = collapse_replicates(table, ["exposure_excess_top", "mia_auc_reference"])
    claims = []
    for model, rows in table.groupby("model", sort=False):
        if is_matched(model):                              # compared with their DP twin in _matched_claims
            continue
        non_private = rows[rows["target_epsilon"].map(math.isinf)]
        base_excess = (float(non_private.iloc[0][f"exposure_r{top}"] - non_private.iloc[0]["exposure_heldout"])
                       if len(non_private) else None)
        for row in rows.itertuples():
            eps = row.target_epsilon
            excess = float(getattr(row, f"exposure_r{top}") - row.exposure_heldout)
            if math.isinf(eps):
                holds = excess > 2.0
                text = (f"{model}, {epsilon_text(eps)}: exposure of {top}× canaries minus never-trained canaries "
                        "(bits; memorized if > 2)")
            else:
                holds = base_excess is None or excess < base_excess - 1.0
                text = (f"{model}, {epsilon_text(eps)}: exposure of {top}× canaries minus never-trained canaries "
                        "(bits; at least 1 bit below the non-private model)")
            claims.append(Claim(f"memorization.exposure.{model}.eps{epsilon_label(eps)}", text, excess, EXPOSURE, holds,
                                row_interval(row, "exposure_excess_top")
                                or _exposure_interval(t["canary_exposure.csv"], model, eps, top), null=0.0))
            claims.append(Claim(f"memorization.mia.{model}.eps{epsilon_label(eps)}",
                                f"{model}, {epsilon_text(eps)}: reference-calibrated membership AUC (chance 0.5)",
                                float(row.mia_auc_reference), AUC, None,
                                row_interval(row, "mia_auc_reference")
                                or _auc_interval(t["membership_inference.csv"], model, eps), null=0.5))
    return claims


def _matched_claims(t) -> list[Claim]:
    """Memorization at equal utility (:mod:`prunepriv.report.matched`): each utility-matched run reached its
    DP twin's held-out perplexity, and the DP run's exposure and membership AUC minus the matched run's."""
    runs = collapse_replicates(t["finetune.csv"], ["perplexity_private"])
    if "matched_epsilon" not in runs:
        return []
    claims = []
    top = top_repetitions(t["memorization.csv"])
    for row in runs[runs["model"].map(is_matched)].itertuples():
        base, eps = base_model(row.model), float(row.matched_epsilon)
        claims.append(Claim(f"finetune.matched.{base}", f"{base} model, non-private, stopped at the held-out "
                            f"perplexity of its run at ε = {eps:g} ({row.stop_perplexity:.4g}): its perplexity",
                            float(row.perplexity_private), TRAINED,
                            bool(row.perplexity_private <= row.stop_perplexity * (1 + 1e-9)),
                            row_interval(row, "perplexity_private")))
        value, interval = matched.exposure_difference(t["canary_exposure.csv"], base, row.model, eps, top)
        claims.append(Claim(f"memorization.matched.{base}.exposure", f"{base}, ε = {eps:g} minus its utility-matched "
                            f"non-private run: excess exposure of {top}× canaries (bits; < 0: DP memorizes less at "
                            "equal utility)", value, EXPOSURE, None, interval, null=0.0))
        value, interval = matched.auc_difference(t["membership_inference.csv"], base, row.model, eps)
        claims.append(Claim(f"memorization.matched.{base}.mia", f"{base}, ε = {eps:g} minus its utility-matched "
                            "non-private run: reference-calibrated membership AUC", value, AUC, None, interval,
                            null=0.0))
    return claims


def _of_run(table: pd.DataFrame, model: str, eps: float) -> pd.DataFrame:
    return table[(table["model"] == model) & (table["target_epsilon"] == eps)]


def _exposure_interval(exposure: pd.DataFrame, model: str, eps: float, top: int) -> tuple[float, float] | None:
    """Bootstrap interval of the mean exposure of ``top``× canaries minus that of never-trained ones."""
    rows = _of_run(exposure, model, eps)
    low, high = attacks.mean_difference_interval(rows[rows["repetitions"] == top]["exposure"],
                                                 rows[rows["repetitions"] == 0]["exposure"])
    return (low, high) if math.isfinite(low) else None


def _auc_interval(mia: pd.DataFrame, model: str, eps: float) -> tuple[float, float] | None:
    """Bootstrap interval of the reference-calibrated attack's AUC (members and non-members resampled),
    Hanley–McNeil's for tables saved without it."""
    rows = _of_run(mia, model, eps)
    rows = rows[rows["attack"] == "reference"]
    if not len(rows):
        return None
    r = rows.iloc[0]
    return (row_interval(r, "auc") if "auc_low" in r
            else attacks.auc_interval(float(r["auc"]), int(r["members"]), int(r["nonmembers"])))


def _audit_claims(t) -> list[Claim]:
    audit = t["audit.csv"]
    private = audit[~audit["target_epsilon"].map(math.isinf)]
    worst = float((private["epsilon_lower_bound"] - private["epsilon_rdp_at_audit_delta"]).max())
    return [
        Claim("audit.below_accountant", "every one-run audit lower bound ≤ its accountant ε "
              "(largest bound − ε shown; ≤ 0 holds)", worst, PREDICATE, bool(worst <= 1e-9)),
        Claim("audit.max_bound", "largest one-run audit lower bound on ε over all models",
              float(audit["epsilon_lower_bound"].max()), Tolerance("abs", 0.5, "a 95% bound from ≤ 128 coin flips")),
    ]


def _federated_claims(t) -> list[Claim]:
    table, summary = t["federated.csv"], t["federated.json"]
    layers = table[table["method"].str.startswith("layer removal")].set_index("source")
    wanda = table[table["method"].str.startswith("Wanda")].set_index("source")
    clients = [s for s in layers.index if s.startswith("client")]
    diff = float(summary["similarity_max_abs_difference"])
    return [
        Claim("federated.similarity.difference", "token-weighted federated averaging reproduces the centralized "
              "similarity matrix (largest absolute difference; holds below 1e-4, float32 rounding)", diff, PREDICATE,
              bool(diff < 1e-4)),
        Claim("federated.layers", "layers the federated server removes (equal to the centralized choice)",
              str(layers.loc["federated", "removed"]), LAYERS,
              bool(layers.loc["federated", "removed"] == layers.loc["centralized", "removed"])),
        Claim("federated.layers.local.agreement", f"mean Jaccard of the {len(clients)} local-only layer choices "
              "with the centralized choice", float(layers.loc[clients, "agreement"].mean()), AGREEMENT),
        Claim("federated.wanda.agreement", "FedPrLLM layer-wise count-aggregated Wanda mask: Jaccard of pruned weights with the "
              "centralized mask (above every local-only mask's)", float(wanda.loc["federated", "agreement"]), MASKS,
              bool(wanda.loc["federated", "agreement"] >= wanda.loc[clients, "agreement"].max())),
        Claim("federated.wanda.local.agreement", "mean Jaccard of local-only Wanda masks with the centralized mask",
              float(wanda.loc[clients, "agreement"].mean()), MASKS),
        Claim("federated.wanda.perplexity", "held-out perplexity with the federated Wanda mask, before fine-tuning",
              float(wanda.loc["federated", "perplexity_private"]), FORWARD),
        Claim("federated.wanda.perplexity.centralized", "held-out perplexity with the centralized Wanda mask",
              float(wanda.loc["centralized", "perplexity_private"]), FORWARD),
    ]


def _selection_claims(t) -> list[Claim]:
    draws, chosen, info = t["private_selection_draws.csv"], t["private_selection.csv"], t["private_selection.json"]
    agreement = draws.groupby("selection_epsilon")["agreement"].mean()
    finite = sorted(e for e in agreement.index if math.isfinite(e))
    claims = [Claim(f"selection.agreement.eps{epsilon_label(e)}", f"private selection at selection ε = {e:g}: mean "
                    "Jaccard with the non-private choice over the noise draws", float(agreement[e]), AGREEMENT)
              for e in finite]
    if len(finite) > 1:
        low, high = float(agreement[finite[0]]), float(agreement[finite[-1]])
        claims.append(Claim("selection.agreement.grows", f"agreement grows with the selection ε (at ε = {finite[-1]:g} "
                            f"minus at ε = {finite[0]:g})", high - low, PREDICATE, bool(high >= low)))
    claims.append(Claim("selection.public.agreement", "the choice made from public text alone: Jaccard with the "
                        "non-private choice", float(info["public_reference_agreement"]), AGREEMENT))
    for row in chosen.itertuples():
        if not math.isfinite(row.selection_epsilon):
            claims.append(Claim("selection.perplexity.epsinf", "non-private selection, DP fine-tuned at "
                                f"ε = {row.finetune_epsilon:g}: held-out perplexity", float(row.perplexity_private),
                                TRAINED_DP))
            continue
        tag = epsilon_label(row.selection_epsilon)
        e2e, sel, tune = row.end_to_end_epsilon_rdp, row.selection_epsilon_rdp, row.finetune_epsilon_rdp
        claims.append(Claim(f"selection.endtoend.eps{tag}", f"end-to-end ε (RDP, δ = {row.delta:.2g}) of selection "
                            f"at ε = {row.selection_epsilon:g} then DP-LoRA at ε = {row.finetune_epsilon:g}, composed "
                            "by one accountant (between the larger and the sum)", float(e2e), EXACT_MATH,
                            bool(max(sel, tune) <= e2e <= sel + tune + 1e-9)))
        claims.append(Claim(f"selection.perplexity.eps{tag}", f"privately selected (ε = {row.selection_epsilon:g}) "
                            f"and DP fine-tuned (ε = {row.finetune_epsilon:g}) model: held-out perplexity",
                            float(row.perplexity_private), TRAINED_DP))
    return claims


def compression_slug(name: str) -> str:
    """``magnitude 50%`` → ``magnitude``; ``layer removal (k=15)`` → ``layers``."""
    first = name.split()[0].lower()
    return "layers" if first == "layer" else first


def _compression_claims(t) -> list[Claim]:
    table = t["compression_baselines.csv"]
    eps = float(table["target_epsilon"].iloc[0])
    claims = []
    for row in table.itertuples():
        slug = compression_slug(row.model)
        claims.append(Claim(f"compression.perplexity.{slug}", f"{row.model}, DP-LoRA at ε = {eps:g}: held-out perplexity",
                            float(row.perplexity_private), TRAINED_DP))
        claims.append(Claim(f"compression.mia.{slug}", f"{row.model}, DP-LoRA at ε = {eps:g}: reference-calibrated "
                            "membership AUC (chance 0.5)", float(row.mia_auc_reference), AUC))
        if slug == "dense":
            continue
        claims.append(Claim(f"compression.parameters.{slug}", f"{row.model}: non-zero parameters relative to dense",
                            float(row.parameter_fraction), Tolerance("rel", 1e-6, "parameter counting is exact")))
        if slug in ("layers", "dpkd"):
            text, holds = "decode time relative to dense (removing layers is faster)", row.decode_ratio < 1.0
        else:
            text, holds = ("decode time relative to dense (dense kernels gain nothing from zeros: ≥ 0.85)",
                           row.decode_ratio >= 0.85)
        claims.append(Claim(f"compression.decode.{slug}", f"{row.model}: {text}", float(row.decode_ratio), TIMING,
                            bool(holds)))
    by_slug = {compression_slug(r.model): r for r in table.itertuples()}
    if "wanda" in by_slug and "layers" in by_slug:
        ratio = float(by_slug["layers"].perplexity_private / by_slug["wanda"].perplexity_private)
        claims.append(Claim("compression.layers.over.wanda", "at a matched parameter count, held-out perplexity after "
                            "DP-LoRA of layer removal divided by Wanda's (> 1: unstructured sparsity keeps more "
                            "quality)", ratio, Tolerance("rel", 0.25, "a ratio of two DP fine-tuned perplexities, "
                                                         "each within ±15%"), bool(ratio > 1.0)))
    if "dpkd" in by_slug and "layers" in by_slug:
        ratio = float(by_slug["dpkd"].perplexity_private / by_slug["layers"].perplexity_private)
        claims.append(Claim("compression.dpkd.over.layers", "same student, same total ε: held-out perplexity of DPKD "
                            "(DP teacher distilled under DP, ε split over both runs) divided by plain DP-LoRA's "
                            "(a measurement)", ratio, Tolerance("rel", 0.25, "a ratio of two DP fine-tuned "
                                                                "perplexities, each within ±15%")))
    audited = table.dropna(subset=["audit_lower_bound"]) if "audit_lower_bound" in table else table.iloc[:0]
    if len(audited):
        worst = float((audited["audit_lower_bound"] - audited["audit_epsilon_rdp"]).max())
        claims.append(Claim("compression.audit.below_accountant", "every compressed model's audit lower bound ≤ its "
                            "accountant ε (largest bound − ε; ≤ 0 holds)", worst, PREDICATE, bool(worst <= 1e-9)))
    return claims


def best_other(healed: pd.DataFrame, paper_strategy: str) -> pd.Series | None:
    """The row of ``tab:pruning-healed`` other than the paper's strategy with the lowest perplexity after
    healing (``None`` if there is none)."""
    others = healed[(healed["strategy"] != paper_strategy) & healed["perplexity_private"].map(math.isfinite)]
    return None if not len(others) else others.loc[others["perplexity_private"].idxmin()]


def _healing_claims(t) -> list[Claim]:
    """Each layer-removal strategy at the paper's depth after DP healing (notebook 06), and the paper's
    strategy against the best other one (a measurement: both carry their own interval)."""
    if "pruning_healed.csv" not in t:
        return []
    table, chosen = t["pruning_healed.csv"], t["pruned_layers.json"]
    claims = []
    for row in table.itertuples():
        claims.append(Claim(f"healing.perplexity.{row.strategy}", f"{row.strategy}: {int(row.removed)} layers removed, "
                            f"DP-LoRA at ε = {row.target_epsilon:g}: held-out perplexity",
                            float(row.perplexity_private), TRAINED_DP, interval=row_interval(row, "perplexity_private")))
    paper_row = table[table["strategy"] == chosen["strategy"]]
    other = best_other(table, chosen["strategy"])
    if len(paper_row) and other is not None:
        ratio = float(paper_row["perplexity_private"].iloc[0] / other["perplexity_private"])
        claims.append(Claim("healing.paper.over.best", f"after DP healing, held-out perplexity of {chosen['strategy']} "
                            f"divided by the best other strategy's ({other['strategy']}; a measurement)", ratio,
                            Tolerance("rel", 0.25, "a ratio of two DP fine-tuned perplexities, each within ±15%")))
    return claims


# --------------------------------------------------------------------------
# comparison

def compare(reference: list[Claim], reproduced: list[Claim]) -> pd.DataFrame:
    """One row per reference claim: values, tolerance, verdict (``reproduced``, ``differs``, ``fails``, ``missing``)."""
    mine = {c.id: c for c in reproduced}
    rows = []
    for ref in reference:
        rep = mine.get(ref.id)
        if rep is None:
            verdict = "missing"
        elif rep.holds is False:
            verdict = "fails"
        elif not ref.tolerance.accepts(ref.value, rep.value):
            verdict = "differs"
        else:
            verdict = "reproduced"
        rows.append({"claim": ref.id, "text": ref.text, "reference": ref.value,
                     "reproduced": None if rep is None else rep.value,
                     "interval": format_interval(None if rep is None else rep.interval),
                     "detectable": "" if rep is None else rep.detectable,
                     "tolerance": ref.tolerance.describe(), "verdict": verdict, "why": ref.tolerance.why})
    return pd.DataFrame(rows)


def format_value(value) -> str:
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


def format_interval(interval: tuple[float, float] | None) -> str:
    """``[low, high]``, or empty where the claim's data give no interval."""
    return "" if interval is None else f"[{format_value(float(interval[0]))}, {format_value(float(interval[1]))}]"


def claims_table(found: list[Claim]) -> pd.DataFrame:
    """The claims of one run as ``claims.csv``: value, its 95% interval where the data give one, tolerance,
    and whether the qualitative part holds."""
    return pd.DataFrame([{"claim": c.id, "text": c.text, "value": format_value(c.value),
                          "interval": format_interval(c.interval), "detectable": c.detectable,
                          "tolerance": c.tolerance.describe(), "holds": c.holds} for c in found])


def failing(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of :func:`claims_table` whose qualitative part does not hold (``None`` means: it has none)."""
    return table[table["holds"] == False]  # noqa: E712 - None must not count as failing
