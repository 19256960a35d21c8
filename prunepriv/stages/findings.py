""""What this notebook found": the closing cell of every notebook, written from the run's own tables.

Each function takes the frames the notebook has just computed and returns
Markdown sentences with the numbers filled in, so that the findings change
when the results do and no number is typed by hand. Where the evidence is
too thin to rank two settings (membership-inference AUCs of a few dozen
records) the sentence says so and gives the interval.
"""
from __future__ import annotations

import math

import pandas as pd

from prunepriv.attacks.audit import UNTESTABLE_BLIND, UNTESTABLE_CEILING
from prunepriv.attacks.probes import auc_interval, tpr_column
from prunepriv.privacy.record import base_model, is_matched
from prunepriv.privacy.specs import epsilon_text
from prunepriv.report.power import detectable_effect
from prunepriv.report.seeds import collapse_replicates, recovered_share, row_interval


class Findings(str):
    """Markdown text that Jupyter renders as Markdown (and prints as plain text elsewhere)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def _setting(row: dict) -> str:
    """``unpruned, ε = 8`` for a run of a table, ``…, seed 2`` for replicate 1 (``finetune.replicates``)."""
    replicate = int(row.get("replicate", 0) or 0)
    return f"{row['model']}, {epsilon_text(float(row['target_epsilon']))}" + (f", seed {replicate + 1}" if replicate else "")


def _bullets(lines: list[str]) -> Findings:
    return Findings("\n".join(f"- {line}" for line in lines))


def similarity(table: pd.DataFrame, readings: dict[str, list[int]], k: int) -> Findings:
    """Notebook 01: where the layers are most alike, and which layers each reading removes."""
    inner = table.dropna(subset=["adjacent_cosine"])
    top = inner.sort_values("adjacent_cosine", ascending=False).iloc[0]
    low = inner.sort_values("adjacent_cosine").iloc[0]
    shared = len(set(readings["cosine"]) & set(readings["block"]))
    return _bullets([
        f"Layer {int(top['layer'])} changes its input least (cosine {top['adjacent_cosine']:.4f} between the "
        f"representation before and after it) and layer {int(low['layer'])} most (cosine {low['adjacent_cosine']:.4f}).",
        f"Removing {k} layers, the adjacent-cosine reading picks {_join(readings['cosine'])} and the block "
        f"reading (Gromov et al.) picks {_join(readings['block'])}: {shared} of {k} in common.",
    ])


def _join(layers) -> str:
    return ", ".join(map(str, layers))


def pruning(sweep: pd.DataFrame, latency: pd.DataFrame, strategy: str, k: int,
            stability: dict | None = None) -> Findings:
    """Notebook 02: perplexity and latency of the paper's pruned model, the strategies at the same k, and
    how stable the choice is under a bootstrap of the calibration sequences."""
    full = sweep[sweep["removed"] == 0].iloc[0]
    at_k = sweep[sweep["removed"] == k].set_index("strategy")
    lines = []
    if strategy in at_k.index:
        row = at_k.loc[strategy]
        lines.append(f"Removing {k} layers with `{strategy}` leaves {row['parameter_fraction']:.0%} of the parameters "
                     f"and raises held-out private perplexity from {full['perplexity_private']:.2f} to "
                     f"{row['perplexity_private']:.2f} (×{row['perplexity_private'] / full['perplexity_private']:.2f}), "
                     f"general-English perplexity from {full['perplexity_general']:.2f} to {row['perplexity_general']:.2f}.")
    if len(at_k) > 1:
        best = at_k["perplexity_private"].idxmin()
        lines.append(f"At {k} layers removed, the lowest private perplexity is `{best}`'s "
                     f"({at_k.loc[best, 'perplexity_private']:.2f}); the others: "
                     + ", ".join(f"`{s}` {v:.2f}" for s, v in at_k["perplexity_private"].items() if s != best) + ".")
    pruned = latency[latency["removed"] > 0]
    if len(pruned):
        row = pruned.iloc[-1]
        span = (f" (repeats {row['decode_ratio_low']:.2f}–{row['decode_ratio_high']:.2f})"
                if "decode_ratio_low" in row else "")
        lines.append(f"Without {int(row['removed'])} layers, prefill takes {row['prefill_ratio']:.2f} and decoding "
                     f"{row['decode_ratio']:.2f}{span} of the unpruned time (the layer count alone predicts "
                     f"{row['ideal_ratio']:.2f}).")
        busy = pruned[~pruned.get("timing_valid", pd.Series(True, index=pruned.index)).astype(bool)]
        lines.append("Every timing was taken on an idle machine (the repeats agree, no ratio below the layer count's)."
                     if not len(busy) else
                     f"{len(busy)} of {len(pruned)} timings were taken while the machine was busy ("
                     + "; ".join(f"{int(r['removed'])} removed: {r['timing_note']}" for r in busy.to_dict("records"))
                     + "): they are reported, never claimed.")
    if stability and stability.get("same_set") is not None:
        frequency = stability["layer_frequency"]
        unsure = [f"{i} ({f:.0%})" for i, f in enumerate(frequency) if 0.05 <= f <= 0.95]
        lines.append(f"Resampling the calibration sequences ({stability['draws']} bootstrap draws) gives the same "
                     f"{k} layers in {stability['same_set']:.0%} of draws; the {k}-th most similar layer leads the "
                     f"next by {stability['margin']:.2g} in adjacent cosine; layers chosen in 5–95% of draws: "
                     + (", ".join(unsure) if unsure else "none") + ".")
    return _bullets(lines)


def finetuning(runs: pd.DataFrame) -> Findings:
    """Notebook 03: utility per model and ε (the mean of its runs when it ran more than once), and the ε
    each run actually spent."""
    runs_table = runs
    runs = collapse_replicates(runs, ["perplexity_private"])
    seeds = int(runs["seeds"].max()) if len(runs) else 1
    lines = []
    for model, group in runs.groupby("model", sort=False):
        if is_matched(model):
            lines += [_matched_run(r) for r in group.itertuples()]
            continue
        before = group["perplexity_private_before"].iloc[0]
        parts = [f"{epsilon_text(float(r.target_epsilon))}: {r.perplexity_private:.2f}" + _ci(r, "perplexity_private")
                 for r in group.itertuples()]
        lines.append(f"**{model}** ({int(group['layers'].iloc[0])} layers): held-out private perplexity "
                     f"{before:.2f} before fine-tuning; after: " + "; ".join(parts) + ".")
    raw = runs_table
    for model in [m for m in dict.fromkeys(raw["model"]) if not is_matched(m)]:
        for eps in sorted({float(e) for e in raw[raw["model"] == model]["target_epsilon"] if math.isfinite(e)},
                          reverse=True):
            share, interval, n = recovered_share(raw, model, eps)
            if not math.isfinite(share):
                continue
            span = f" [{interval[0]:.2f}, {interval[1]:.2f}] across {n} seeds" if interval else " (one seed)"
            lines.append(f"**{model}** at ε = {eps:g} recovers {share:.2f}{span} of the non-private runs' held-out "
                         "log-perplexity gain" + (" — at least half." if interval and interval[0] >= 0.5 else
                                                 " — less than half." if interval and interval[1] < 0.5 else "."))
    private = runs_table[runs_table["target_epsilon"].map(lambda e: not math.isinf(float(e)))]   # every run
    if len(private):
        worst = (private["epsilon_rdp"] / private["target_epsilon"]).max()
        lines.append(f"Every private run's accountant ε (RDP) is at most {worst:.3f}× its target; δ = "
                     f"{private['delta'].iloc[0]:.1e}, {int(private['steps'].max())} steps at most.")
    uncovered = runs["uncovered_uses"].fillna("") if "uncovered_uses" in runs else pd.Series([], dtype=str)
    for model, uses in runs[uncovered != ""].groupby("model", sort=False)["uncovered_uses"]:
        lines.append(f"The **{model}** model's ε covers its training records only; not covered: {uses.iloc[0]}.")
    if seeds > 1:
        lines.append(f"Brackets: 95% intervals of the mean across the independent runs of a setting (up to {seeds}, "
                     "each its own batches, noise and canaries): they include the training noise. A setting run "
                     "once has a bootstrap interval over held-out patients, which does not.")
    else:
        lines.append("Brackets: 95% bootstrap intervals over the held-out patients (evaluation noise only). One run "
                     "(one seed) per setting, each with its own batches and noise, so the spread between training "
                     "runs is not measured: differences between ε values are not tested here "
                     "(`finetune.replicates` runs each setting several times).")
    return _bullets(lines)


def _matched_run(r) -> str:
    """The utility-matched run of a model: where it stopped against its target."""
    return (f"**{base_model(r.model)}**, non-private, stopped once its perplexity on the few held-out records "
            f"it checks after each step reached its ε = {r.matched_epsilon:g} run's ({r.stop_perplexity:.2f} there); "
            f"on all held-out patients it reached {r.perplexity_private:.2f}" + _ci(r, "perplexity_private")
            + f" after {float(r.steps):.0f} step(s) (the utility-matched baseline of notebook 05).")


def _ci(row, column: str) -> str:
    """`` [low, high]`` of a row's ``column`` from its ``_low`` / ``_high`` columns ("" when not saved)."""
    span = row_interval(row, column)
    return "" if span is None else f" [{span[0]:.2f}, {span[1]:.2f}]"


def synthetic(table: pd.DataFrame) -> Findings:
    """Notebook 04: how much text each model wrote and how close it is to held-out notes."""
    lines = [f"{_setting(r._asdict())}: {int(r.samples)} samples ({int(r.empty_samples)} empty), "
             f"{r.mean_tokens:.1f} tokens on average, BERTScore F1 to held-out notes {r.bertscore_f1_heldout:.3f}."
             for r in table.itertuples()]
    return _bullets(lines)


def memorization(table: pd.DataFrame, mia: pd.DataFrame, audit: pd.DataFrame,
                 matched: pd.DataFrame | None = None) -> Findings:
    """Notebook 05: membership inference with intervals, canary exposure beside its control, the audit, and
    each DP model against its utility-matched run (``matched``: :func:`prunepriv.report.matched.comparison`)."""
    lines = _membership_lines(mia) + _exposure_lines(table) + _untuned_lines(table) + _audit_lines(audit)
    if matched is not None:
        lines += _matched_memorization(matched)
    seeds = int(table.groupby(["model", "target_epsilon"]).size().max()) if len(table) and "model" in table else 1
    lines.append(f"Up to {seeds} independent run(s) per setting; a difference between settings is called one only "
                 "where a paired interval or a permutation test excludes no effect.")
    return _bullets(lines)


def _membership_lines(mia: pd.DataFrame) -> list[str]:
    """The loss attack's AUC per run, with its interval and, for a null result, its power."""
    lines = []
    loss = mia[mia["attack"] == "loss"]
    for r in loss.to_dict("records"):            # dicts: column names such as tpr_at_0.01_fpr kept
        lo, hi = r.get("auc_low", math.nan), r.get("auc_high", math.nan)         # bootstrap, where saved
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = auc_interval(r["auc"], int(r["members"]), int(r["nonmembers"]))
        lines.append(f"{_setting(r)}: loss-attack AUC {r['auc']:.3f} "
                     f"(95% interval {lo:.2f}–{hi:.2f}, {int(r['members'])} vs {int(r['nonmembers'])} records"
                     + _tpr(r) + ")"
                     + (f"; the interval includes chance (0.5): a null result, AUC shifts ≥ "
                        f"{detectable_effect((lo, hi), 0.5):.2f} detectable (80% power)" if lo <= 0.5 <= hi else "")
                     + ".")
    return lines


def _exposure_lines(table: pd.DataFrame) -> list[str]:
    """The most repeated canaries' exposure beside its chance band and the never-trained canaries' excess."""
    lines = []
    top = max((int(c[len("exposure_excess_r"):-2]) for c in table.columns
               if c.startswith("exposure_excess_r") and c.endswith("_p")), default=None)
    for r in table.to_dict("records") if top is not None else []:
        p = r.get(f"exposure_excess_r{top}_p", math.nan)
        verdict = ("memorized: the excess is above the never-trained canaries' (permutation p = "
                   f"{p:.2g})" if p < 0.05 and r[f"exposure_excess_r{top}"] > r["exposure_excess_r0"]
                   else f"not distinguishable from the never-trained canaries (permutation p = {p:.2g})")
        low, high = r.get(f"exposure_r{top}_chance_low", math.nan), r.get(f"exposure_r{top}_chance_high", math.nan)
        lines.append(f"{_setting(r)}: {top}× canaries' exposure {r[f'exposure_r{top}']:.2f} bits (95% chance band "
                     f"for their number: {low:.2f}–{high:.2f}); in excess of each canary's own exposure before "
                     f"fine-tuning {r[f'exposure_excess_r{top}']:+.2f} bits against {r['exposure_excess_r0']:+.2f} for "
                     f"never-trained canaries: {verdict}.")
    return lines


def _untuned_lines(table: pd.DataFrame) -> list[str]:
    """The membership control: the loss attack on each untuned model."""
    lines = []
    untuned = table.drop_duplicates("model") if "mia_auc_untuned" in table else table.iloc[:0]
    for r in untuned.to_dict("records"):
        if is_matched(r["model"]) or not math.isfinite(r["mia_auc_untuned"]):
            continue
        lo, hi = r["mia_auc_untuned_low"], r["mia_auc_untuned_high"]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lines.append(f"Control of every membership attack on the {base_model(r['model'])} model: the loss attack "
                         f"on the untuned model has AUC {r['mia_auc_untuned']:.3f}, without an interval to judge it by.")
            continue
        lines.append(f"Control of every membership attack on the {base_model(r['model'])} model: the loss attack on "
                     f"the untuned model, which saw neither side, has AUC {r['mia_auc_untuned']:.3f} [{lo:.2f}, {hi:.2f}]"
                     + (" — members and non-members come from one distribution." if lo <= 0.5 <= hi else
                        " — the interval excludes 0.5: the two sides differ in something other than membership, "
                        "and the tuned models' AUCs are confounded by it."))
    return lines


def _audit_lines(audit: pd.DataFrame) -> list[str]:
    """The one-run audit: bounds against the accountant, untestable runs, the positive control."""
    lines = []
    if not len(audit):
        return lines
    counts = audit["verdict"].value_counts() if "verdict" in audit else pd.Series(dtype=int)
    private = audit[~audit["target_epsilon"].map(lambda e: math.isinf(float(e)))]
    reason = private["reason"] if "reason" in private else pd.Series("", index=private.index)
    ceiling, blind = (int((reason == r).sum()) for r in (UNTESTABLE_CEILING, UNTESTABLE_BLIND))
    lines.append(f"One-run audit ({int(audit['audit_canaries'].iloc[0])} canaries, 95% confidence): "
                 f"{int((private['bound_below_accountant']).sum())} of {len(private)} private runs have a lower "
                 f"bound at or below the accountant's ε"
                 + (f", {int(counts.get('fails', 0))} above it" if counts.get("fails", 0) else "")
                 + f"; the largest bound any guesses could give is {audit['epsilon_attainable'].max():.2f}, so "
                 f"{ceiling} private run(s) whose accountant "
                 "ε exceeds that are untestable here, not confirmed"
                 + (f", and {blind} more {'is' if blind == 1 else 'are'} untestable because the model's non-private control is blind "
                    "(bound 0)" if blind else "") + ".")
    nonprivate = audit[audit["target_epsilon"].map(lambda e: math.isinf(float(e)))]
    if len(nonprivate):
        lines.append(f"Positive control: the audit's bound on the non-private runs is "
                     + ", ".join(f"{b:.2f}" for b in nonprivate["epsilon_lower_bound"])
                     + (" — above 0: the audit sees memorization where there is no DP."
                        if (nonprivate["epsilon_lower_bound"] > 0).all() else
                        " — not above 0 in every run: these canaries cannot show what DP prevents."))
    return lines


def _tpr(row: dict) -> str:
    """``; TPR at 1% FPR 0.05 [0.00, 0.15]`` from a membership row (``""`` when not saved)."""
    tpr, low, high = (row.get(tpr_column(0.01) + s, math.nan) for s in ("", "_low", "_high"))
    if not math.isfinite(tpr):
        return ""
    span = f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) and math.isfinite(high) else ""
    below = " (1% is below one non-member: the threshold is the highest non-member score)" \
        if row.get("fpr_resolution", 0) > 0.01 else ""
    return f"; TPR at 1% FPR {tpr:.2f}{span}{below}"


def _matched_memorization(table: pd.DataFrame) -> list[str]:
    """One sentence per row of :func:`prunepriv.report.matched.comparison`, with its 95% intervals."""
    lines = []
    for r in table.itertuples():
        exposure, auc = (r.exposure_difference_low, r.exposure_difference_high), (r.auc_difference_low,
                                                                                  r.auc_difference_high)
        lines.append(f"At equal utility (held-out perplexity {r.perplexity_dp:.2f} under DP, "
                     f"{r.perplexity_matched:.2f} for the non-private twin stopped after {r.matched_steps:g} "
                     f"step(s)), **{r.model}** at ε = {r.epsilon:g} minus the twin: excess exposure of "
                     f"{r.canary_repetitions}× canaries {r.exposure_difference:+.2f} bits{_pair(exposure)}, "
                     f"reference-attack AUC {r.auc_difference:+.3f}{_pair(auc)}; "
                     + (f"the exposure interval includes 0: a null result, differences ≥ "
                        f"{detectable_effect(exposure, 0.0) or math.nan:.2f} bits detectable (80% power)."
                        if _covers_zero(exposure) else "the exposure interval excludes 0."))
    return lines


def _pair(interval) -> str:
    return "" if not all(map(math.isfinite, interval)) else f" [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def _covers_zero(interval) -> bool:
    return not all(map(math.isfinite, interval)) or interval[0] <= 0 <= interval[1]


def baselines(fed_summary: dict, chosen: pd.DataFrame, compression: pd.DataFrame,
              healed: pd.DataFrame | None = None, paper_strategy: str = "cosine") -> Findings:
    """Notebook 06: federated agreement, private selection's end-to-end ε, the compression baselines
    (with the layers removal would take out at their latency), each strategy after DP healing."""
    lines = [f"Federated layer scores differ from centralized ones by at most "
             f"{fed_summary['similarity_max_abs_difference']:.2e}; clients agree on layers with mean Jaccard "
             f"{fed_summary['layers_client_pairwise_jaccard']:.2f}."]
    for r in chosen.itertuples():
        lines.append(f"Private selection at ε = {r.selection_epsilon:g} removes {r.removed}; fine-tuned, "
                     f"private perplexity {r.perplexity_private:.2f}, end-to-end ε = {r.end_to_end_epsilon_rdp:.3f} (RDP).")
    for r in compression.itertuples():
        deployed = getattr(r, "deployed_parameter_fraction", r.parameter_fraction)
        lines.append(f"`{r.model}`: {r.parameter_fraction:.0%} of the parameters non-zero before fine-tuning, "
                     f"{deployed:.0%} as deployed (LoRA merged); private perplexity {r.perplexity_private:.2f} at "
                     f"ε = {r.epsilon_rdp:.2f}, decode time {r.decode_ratio:.2f}× dense"
                     + _latency_match(r) + ".")
    return _bullets(lines + ([] if healed is None else _healing(healed, paper_strategy)))


def _latency_match(row) -> str:
    """``; at its prefill time layer removal takes out 0.3 layers`` (empty when not measured)."""
    layers = getattr(row, "latency_matched_layers", math.nan)
    if not math.isfinite(layers) or row.model.startswith(("dense", "layer removal")):
        return ""
    if layers < 0.5:                            # as slow as dense or slower (timing noise): matches no removal
        return "; at its measured prefill time it is no faster than dense, so at matched latency it competes with the dense model"
    return f"; at its measured prefill time layer removal would take out {layers:.1f} layers"


def _healing(healed: pd.DataFrame, paper_strategy: str) -> list[str]:
    """Each strategy's held-out perplexity after DP healing, ranked, and each other strategy against the
    paper's by a paired interval on the same patients (:func:`prunepriv.stages.healing.paired_to_paper`)."""
    ranked = healed.sort_values("perplexity_private")
    parts = []
    for r in ranked.to_dict("records"):
        span = row_interval(r, "perplexity_private")
        parts.append(f"{r['strategy']} {r['perplexity_private']:.1f}"
                     + (f" [{span[0]:.1f}, {span[1]:.1f}]" if span else ""))
    eps = float(healed["target_epsilon"].iloc[0])
    lines = [f"After DP healing at ε = {eps:g} ({int(healed['removed'].iloc[0])} layers removed), held-out "
             f"perplexity by strategy, best first: {'; '.join(parts)} (cosine is ShortGPT's Block Influence)."]
    for r in ranked[ranked["strategy"] != paper_strategy].to_dict("records"):
        ratio, low, high = (r.get(f"ratio_to_paper{s}", math.nan) for s in ("", "_low", "_high"))
        if not all(map(math.isfinite, (ratio, low, high))):
            lines.append(f"{r['strategy']} against {paper_strategy}: no paired ratio (a run kept no per-record "
                         "losses); the unpaired intervals above hold only the evaluation noise.")
            continue
        verdict = ("not distinguishable: the paired interval includes 1" if low <= 1 <= high else
                   f"{'worse' if low > 1 else 'better'} than {paper_strategy}: the paired interval excludes 1")
        lines.append(f"{r['strategy']} against {paper_strategy}, on the same held-out patients: perplexity ratio "
                     f"{ratio:.3f} [{low:.3f}, {high:.3f}] (one run each, so training noise is not in the "
                     f"interval) — {verdict}.")
    return lines


def paper(table: pd.DataFrame, failing: pd.DataFrame) -> Findings:
    """Notebook 07: how many claims the run supports."""
    return _bullets([f"{len(table)} claims computed from this run's tables; {len(failing)} qualitative claim(s) "
                     "do not hold in it" + (": " + ", ".join(failing["claim"]) if len(failing) else "") + "."])
