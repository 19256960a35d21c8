"""Figures: similarity heatmap, adjacent similarity, latency and perplexity
versus layers removed. Each function returns a matplotlib Figure."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from prunepriv.compress.similarity import LayerSimilarity
from prunepriv.privacy.record import base_model, is_matched
from prunepriv.report.seeds import collapse_replicates

# Figures are drawn at the size they are printed (paper/main.tex includes them unscaled): text
# width 6.3 in (A4, 2.5 cm margins), text at 7-8 pt, fonts embedded as TrueType (Type 42, never
# Type 3 bitmaps).
TEXT_WIDTH = 6.3
FIGURE_WIDTH = TEXT_WIDTH - 0.3      # a full-width figure: its tight bounding box (labels, legends) stays inside
PAPER_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
            "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 8, "lines.markersize": 4,
            "pdf.fonttype": 42, "ps.fonttype": 42}
sns.set_theme(style="whitegrid", context="paper", rc=PAPER_RC)


def similarity_heatmap(sim: LayerSimilarity, title: str = "") -> plt.Figure:
    """L+1 × L+1 mean token cosine similarity of layer representations."""
    fig, ax = plt.subplots(figsize=(2.8, 2.5))          # beside the latency figure: half the text width each
    size = sim.matrix.shape[0]
    step = max(1, size // 10)
    sns.heatmap(sim.matrix, ax=ax, cmap="viridis", vmin=min(0.0, float(sim.matrix.min())), vmax=1.0,
                square=True, cbar_kws={"label": "mean token cosine"},
                xticklabels=step, yticklabels=step)
    ax.set_xlabel("representation j (0 = embeddings)")
    ax.set_ylabel("representation i")
    ax.set_title(title or "Similarity of layer representations")
    return fig


def adjacent_similarity(sim: LayerSimilarity, chosen: list[int], strategy: str = "cosine",
                        frequency: list[float] | None = None) -> plt.Figure:
    """Per-layer input/output cosine similarity, removed layers marked; with ``frequency`` (how often each
    layer is chosen when the calibration sequences are resampled, stage 02's choice stability) a lower
    panel shows how firmly the data choose each layer."""
    rows = 2 if frequency is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(FIGURE_WIDTH, 2.2 * rows), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1][:rows]})
    ax = axes[0, 0]
    layers = np.arange(sim.num_layers)
    ax.plot(layers, sim.adjacent, marker="o", ms=4, color="tab:blue", label="cos(input, output)")
    if chosen:
        ax.scatter(chosen, sim.adjacent[chosen], s=40, facecolors="none", edgecolors="tab:red", linewidths=1.5,
                   label=f"removed by '{strategy}' (k={len(chosen)})", zorder=3)
    ax.set_ylabel("adjacent cosine similarity")
    ax.set_title("How much each layer changes its input (high = redundant)")
    ax.legend(loc="lower right")
    if frequency is not None:
        low = axes[1, 0]
        low.bar(layers, frequency, color=["tab:red" if i in chosen else "tab:gray" for i in layers])
        low.set_ylim(0, 1.05)
        low.set_ylabel("chosen in\nbootstrap draws")
    axes[-1, 0].set_xlabel("decoder layer")
    fig.tight_layout()
    return fig


def latency_vs_layers(frame: pd.DataFrame, device: str = "") -> plt.Figure:
    """Measured prefill/decode time ratios with the ideal (L-K)/L line."""
    fig, ax = plt.subplots(figsize=(3.0, 2.6))
    ax.plot(frame["removed"], frame["ideal_ratio"], "k--", label="ideal (L−K)/L")
    ax.plot(frame["removed"], frame["prefill_ratio"], marker="o", label="prefill (measured)")
    ax.plot(frame["removed"], frame["decode_ratio"], marker="s", label="decode, KV cache (measured)")
    ax.set_xlabel("layers removed K")
    ax.set_ylabel("time relative to unpruned")
    ax.set_title("Latency" + (f" ({device})" if device else ""))
    ax.legend()
    return fig


def perplexity_vs_layers(frame: pd.DataFrame) -> plt.Figure:
    """Perplexity versus layers removed, one line per strategy, two domains."""
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 2.4), sharex=True)
    for ax, column, title in zip(axes, ["perplexity_private", "perplexity_general"],
                                 ["held-out private text (clinical notes)", "general English text"]):
        sns.lineplot(data=frame, x="removed", y=column, hue="strategy", style="strategy", markers=True,
                     dashes=False, ax=ax, legend=ax is axes[0])
        ax.set_yscale("log")
        ax.set_xlabel("layers removed K")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(title)
    fig.suptitle("Perplexity of the pruned model, before fine-tuning")
    fig.tight_layout()
    return fig


def _interval(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """Error-bar lengths below and above ``column`` from its ``_low`` / ``_high`` columns (None: none saved)."""
    if f"{column}_low" not in frame or frame[f"{column}_low"].isna().all():
        return None
    return np.vstack([frame[column] - frame[f"{column}_low"], frame[f"{column}_high"] - frame[column]])


def utility_vs_epsilon(frame: pd.DataFrame) -> plt.Figure:
    """Held-out perplexity versus ε; non-private runs as their own marked point.

    Dashed lines: the same models before fine-tuning (for the pruned model,
    the gap between its dashed line and its curve is the "healing").
    """
    frame = collapse_replicates(frame, ["perplexity_private"])      # several seeds: their mean and interval
    frame, matched = _without_matched(frame)
    fig, ax = plt.subplots(figsize=(3.6, 2.6))
    finite = frame[np.isfinite(frame["target_epsilon"])]
    x_inf = (finite["target_epsilon"].max() if len(finite) else 1.0) * 3
    models = sorted(frame["model"].unique(), reverse=True)
    colors = dict(zip(models, ["tab:blue", "tab:orange"]))
    # each model a little to either side of its ε, hollow markers: one model's points never hide the other's
    dodge = dict(zip(models, [0.95, 1.05]))
    for model, group in frame.groupby("model"):
        color = colors[model]
        g = group[np.isfinite(group["target_epsilon"])].sort_values("target_epsilon")
        ax.errorbar(g["epsilon_rdp"] * dodge[model], g["perplexity_private"], yerr=_interval(g, "perplexity_private"),
                    marker="o", mfc="none", color=color, capsize=2, label=f"{model}, DP-SGD")
        nonprivate = group[~np.isfinite(group["target_epsilon"])]
        if len(nonprivate):
            ax.errorbar([x_inf * dodge[model]] * len(nonprivate), nonprivate["perplexity_private"],
                        yerr=_interval(nonprivate, "perplexity_private"), fmt="none", color=color, capsize=2)
            ax.scatter([x_inf * dodge[model]] * len(nonprivate), nonprivate["perplexity_private"], marker="*", s=80,
                       color=color, zorder=3, edgecolors="black", linewidths=0.5,
                       label=f"{model}, non-private (ε = ∞)")
        ax.axhline(group["perplexity_private_before"].iloc[0], ls="--", color=color, alpha=0.7,
                   label=f"{model}, before fine-tuning")
    _matched_points(ax, matched, "perplexity_private", x_inf, colors, dodge)
    ax.set_xscale("log")
    ticks = sorted(finite["epsilon_rdp"].unique()) if len(finite) else []
    ax.set_xticks(list(ticks) + [x_inf])
    ax.set_xticklabels([f"{t:.2g}" for t in ticks] + ["∞"])
    ax.minorticks_off()
    ax.set_xlabel("ε spent (RDP accountant of the run)")
    ax.set_ylabel("perplexity on held-out records")
    seeds = int(frame["seeds"].max())
    mixed = seeds > 1 and int(frame["seeds"].min()) == 1
    ax.set_title("Utility versus privacy (95% intervals " + (
        f"across up to {seeds} seeds;\na setting run once: over held-out patients)" if mixed else
        f"across {seeds} seeds)" if seeds > 1 else "over held-out patients)"), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)   # never over a point
    return fig


def _without_matched(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ordinary runs of a table and its utility-matched non-private runs (``finetune.utility_match``)."""
    matched = frame["model"].map(is_matched)
    return frame[~matched], frame[matched]


def _matched_points(ax, matched: pd.DataFrame, metric: str, x: float, colors: dict, dodge: dict | None = None) -> None:
    """Utility-matched non-private runs as diamonds at ``x`` (the non-private position), in their base
    model's color, with their interval where the table has one."""
    for row in matched.itertuples():
        base = base_model(row.model)
        at = x * (dodge or {}).get(base, 1.0)
        low, high = getattr(row, f"{metric}_low", math.nan), getattr(row, f"{metric}_high", math.nan)
        if math.isfinite(low) and math.isfinite(high):
            value = getattr(row, metric)
            ax.errorbar([at], [value], yerr=[[value - low], [high - value]], fmt="none", color=colors.get(base),
                        capsize=2)
        ax.scatter([at], [getattr(row, metric)], marker="D", s=30, color=colors.get(base, "gray"),
                   edgecolors="black", linewidths=0.5, zorder=3, label=f"{base}, non-private, utility-matched")


def training_curves(curves: pd.DataFrame) -> plt.Figure:
    """Training loss per step for every (model, ε) run."""
    models = sorted(curves["model"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(models), figsize=(FIGURE_WIDTH, 2.4), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        sns.lineplot(data=curves[curves["model"] == model], x="step", y="loss", hue="target_epsilon", ax=ax)
        ax.set_title(f"{model} model")
        ax.set_xlabel("logical step")
        ax.set_ylabel("training loss (per-record NLL)")
        ax.legend(title="target ε")
    fig.tight_layout()
    return fig


def _epsilon_positions(frame: pd.DataFrame) -> tuple[pd.Series, float, list[float]]:
    """x position of each run on a log ε axis; non-private runs sit right of the largest finite ε."""
    finite = frame.loc[np.isfinite(frame["target_epsilon"]), "epsilon_rdp"]
    x_inf = float(finite.max()) * 3 if len(finite) else 1.0
    x = frame["epsilon_rdp"].where(np.isfinite(frame["target_epsilon"]), x_inf)
    return x, x_inf, sorted(finite.unique())


def top_group(table: pd.DataFrame) -> int | None:
    """The largest canary repetition count with paired-excess columns (``exposure_excess_rN``)."""
    counts = [int(c[len("exposure_excess_r"):]) for c in table.columns
              if c.startswith("exposure_excess_r") and c[len("exposure_excess_r"):].isdigit()]
    counts = [c for c in counts if c > 0]
    return max(counts) if counts else None


def memorization_panels(table: pd.DataFrame) -> list[tuple[str, str | None, str, float | None]]:
    """(metric, control, title, no-effect line) of each panel of :func:`epsilon_vs_memorization`."""
    top = top_group(table)
    exposure = [(f"exposure_excess_r{top}", "exposure_excess_r0",
                 f"{top}× canaries: exposure minus untuned (bits)", 0.0)] if top else []
    return exposure + [
        ("mia_auc_reference", None, "membership AUC (reference-calibrated)", 0.5),
        ("prefix_pii_train", "prefix_pii_heldout", "PII completed by the prefix attack", None),
        ("extraction_excess", None, "extraction: F1(train) − F1(held-out)", 0.0),
    ]


def epsilon_vs_memorization(table: pd.DataFrame) -> plt.Figure:
    """One panel per memorization metric versus ε: pruned and unpruned, non-private runs as stars at ∞,
    means across seeds with their 95% intervals, each beside its control (dashed: never-trained canaries or
    held-out records; dotted: no effect)."""
    panels = memorization_panels(table)
    frame = collapse_replicates(table, [metric for metric, *_ in panels])   # across seeds, where several
    frame, matched = _without_matched(frame)
    frame["x"], x_inf, ticks = _epsilon_positions(frame)
    models = sorted(frame["model"].unique(), reverse=True)
    colors = dict(zip(models, ["tab:blue", "tab:orange"]))
    dodge = dict(zip(models, [0.93, 1.07]))              # one model's points never hide the other's
    fig, axes = plt.subplots(2, 2, figsize=(FIGURE_WIDTH, 4.6))
    axes = axes.ravel()
    for ax, (metric, control, label, null) in zip(axes, panels):
        for model in models:
            g = frame[frame["model"] == model].sort_values("x")
            color, x = colors[model], g["x"] * dodge[model]
            ax.errorbar(x, g[metric], yerr=_interval(g, metric), marker="o", mfc="none", color=color, capsize=2,
                        label=f"{model}: trained")
            nonprivate = ~np.isfinite(g["target_epsilon"])
            ax.scatter(x[nonprivate], g.loc[nonprivate, metric], marker="*", s=70, color=color,
                       edgecolors="black", linewidths=0.5, zorder=3)
            if control:
                ax.plot(x, g[control], ls="--", marker="x", color=color, alpha=0.7, label=f"{model}: control")
        _matched_points(ax, matched, metric, x_inf * 1.3, colors)
        if null is not None:
            ax.axhline(null, ls=":", color="gray", label="no effect")
        ax.set_xscale("log")
        ax.set_xticks(list(ticks) + [x_inf])
        ax.set_xticklabels([f"{t:.2g}" for t in ticks] + ["∞"])
        ax.minorticks_off()
        ax.set_xlabel("ε (RDP accountant; ∞ = non-private)")
        ax.set_title(label)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=min(3, len(unique)), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    seeds = int(frame["seeds"].max())
    fig.suptitle("Memorization versus ε" + (f" (means and 95% intervals across up to {seeds} seeds)" if seeds > 1
                                             else " (one seed per setting)"))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def audit_vs_accountant(audit: pd.DataFrame) -> plt.Figure:
    """The one-run audit's ε lower bound of every run against its accountant's ε; non-private runs at ∞
    (the positive control: their bound should be above 0), the largest bound the canaries can give
    (dashed), and each run's verdict by marker: an accountant ε above that ceiling cannot be tested."""
    frame = audit.copy()
    finite = frame["epsilon_rdp_at_audit_delta"].map(math.isfinite)
    x_inf = float(frame.loc[finite, "epsilon_rdp_at_audit_delta"].max()) * 2 if finite.any() else 1.0
    frame["x"] = frame["epsilon_rdp_at_audit_delta"].where(finite, x_inf)
    models = sorted(frame["model"].unique(), reverse=True)
    colors = dict(zip(models, ["tab:blue", "tab:orange", "tab:green", "tab:red"]))
    offsets = dict(zip(models, np.linspace(0.9, 1.1, max(1, len(models)))))
    fig, ax = plt.subplots(figsize=(3.4, 2.7))
    for model in models:
        g = frame[frame["model"] == model]
        ax.scatter(g["x"] * offsets[model], g["epsilon_lower_bound"], s=22, facecolors="none",
                   edgecolors=colors[model], linewidths=1.2, label=model, zorder=3)
    ticks = sorted(frame.loc[finite, "epsilon_rdp_at_audit_delta"].unique())
    low = (min(ticks) if ticks else x_inf) / 1.6
    ceiling = float(frame["epsilon_attainable"].max())
    top = max(ceiling, float(frame["epsilon_lower_bound"].max())) * 1.15 + 0.1
    if ticks:
        ax.plot([low, max(ticks)], [low, max(ticks)], ls="--", color="gray", lw=0.8, label="bound = accountant ε")
    ax.axhline(ceiling, ls=":", color="black", lw=0.8, label=f"largest attainable bound ({ceiling:.2f})")
    ax.set_xscale("log")
    ax.set_xticks(ticks + [x_inf])
    ax.set_xticklabels([f"{t:.2g}" for t in ticks] + ["∞"])
    ax.minorticks_off()
    ax.set_xlim(low, x_inf * 1.4)
    ax.set_ylim(-0.05 * top, top)
    ax.set_xlabel(f"accountant ε at δ = {audit['audit_delta'].iloc[0]:.0e} (∞ = non-private)")
    ax.set_ylabel(f"audit lower bound ({int(round(100 * audit['confidence'].iloc[0]))}% conf.)")
    ax.legend(fontsize=6.5, loc="best", frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# notebook 06: baselines

def federated_agreement(table: pd.DataFrame, layer_choice: dict[str, list[int]], num_layers: int) -> plt.Figure:
    """FedPrLLM: which layers each source removes, and perplexity of every choice."""
    sources = ["centralized", "federated"] + sorted((s for s in layer_choice if s.startswith("client")),
                                                     key=lambda s: int(s.split()[-1]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(FIGURE_WIDTH, 0.22 * len(sources) + 1.6),
                                      gridspec_kw={"width_ratios": [1.6, 1]})
    grid = np.zeros((len(sources), num_layers))
    for i, source in enumerate(sources):
        grid[i, layer_choice[source]] = 1
    sns.heatmap(grid, ax=left, cmap=sns.color_palette(["#f0f0f0", "tab:red"], as_cmap=True), cbar=False,
                linewidths=0.5, linecolor="white", yticklabels=sources, xticklabels=max(1, num_layers // 15))
    left.set_yticklabels(sources, rotation=0)
    left.set_xlabel("decoder layer")
    left.set_title("Layers removed (cosine similarity)")
    methods = list(dict.fromkeys(table["method"]))
    order = [s for s in dict.fromkeys(table["source"]) if not s.startswith("client")] + \
        [s for s in dict.fromkeys(table["source"]) if s.startswith("client")]
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        rows = table[table["method"] == method].set_index("source").reindex(order)
        bars = right.barh(np.arange(len(order)) + j * width, rows["perplexity_private"], height=width, label=method)
        for bar, agree in zip(bars, rows["agreement"]):
            if not np.isfinite(agree):                      # a source this method has no row for
                continue
            right.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {agree:.2f}", va="center", fontsize=7)
    right.set_yticks(np.arange(len(order)) + width * (len(methods) - 1) / 2)
    right.set_yticklabels(order)
    right.invert_yaxis()
    right.set_xlim(0, float(table["perplexity_private"].max()) * 1.15)
    right.set_xlabel("held-out perplexity after pruning\n(label: agreement with centralized)")
    right.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, frameon=False)
    fig.tight_layout()
    return fig


def private_selection(sweep: pd.DataFrame, frequencies: pd.DataFrame, finetuned: pd.DataFrame,
                      public_agreement: float | None = None) -> plt.Figure:
    """Private layer selection: how often each layer is removed, agreement and perplexity versus selection ε.

    ``public_agreement``: Jaccard of the choice made from public text alone (no private data, ε = 0).
    """
    eps = frequencies["selection_epsilon"].tolist()
    labels = ["∞" if np.isinf(e) else f"{e:g}" for e in eps]
    fig, axes = plt.subplots(1, 3, figsize=(FIGURE_WIDTH, 2.4), gridspec_kw={"width_ratios": [1.6, 1, 1]})
    freq = frequencies.drop(columns="selection_epsilon").to_numpy()
    sns.heatmap(freq, ax=axes[0], cmap="Reds", vmin=0, vmax=1, yticklabels=labels,
                xticklabels=max(1, freq.shape[1] // 8), cbar=False)
    axes[0].set_yticklabels(labels, rotation=0)
    axes[0].set_xlabel("decoder layer")
    axes[0].set_ylabel("selection ε")
    axes[0].set_title("Layer removed (fraction of draws)")
    finite = [e for e in eps if np.isfinite(e)]
    x_inf = max(finite) * 3 if finite else 1.0
    x = sweep["selection_epsilon"].where(np.isfinite(sweep["selection_epsilon"]), x_inf)
    agree = sweep.assign(x=x).groupby("x")["agreement"].agg(["mean", "std"]).reset_index()
    axes[1].errorbar(agree["x"], agree["mean"], yerr=agree["std"], marker="o", capsize=2, label="private selection")
    if public_agreement is not None:
        axes[1].axhline(public_agreement, ls=":", color="gray", label="public text only")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].legend(fontsize=7, loc="lower right")
    axes[1].set_ylabel("Jaccard with non-private")
    axes[1].set_title("Agreement (mean ± sd)")
    scored = sweep.assign(x=x).dropna(subset=["perplexity_private"])
    axes[2].scatter(scored["x"], scored["perplexity_private"], color="tab:gray", alpha=0.6, label="after pruning")
    if len(finetuned):
        fx = finetuned["selection_epsilon"].where(np.isfinite(finetuned["selection_epsilon"]), x_inf)
        axes[2].scatter(fx, finetuned["perplexity_private"], marker="*", s=80, color="tab:green",
                        edgecolors="black", linewidths=0.5, label="after DP fine-tuning", zorder=3)
    axes[2].set_ylabel("held-out perplexity")
    axes[2].set_title("Privately pruned model")
    axes[2].legend(fontsize=7, loc="upper right")
    for ax in axes[1:]:
        ax.set_xscale("log")
        ax.set_xticks(finite + [x_inf])
        ax.set_xticklabels([f"{e:g}" for e in finite] + ["∞"])
        ax.minorticks_off()
        ax.set_xlabel("selection ε")
    fig.tight_layout()
    return fig


def compression_baselines(table: pd.DataFrame) -> plt.Figure:
    """Compressed models at one DP ε: perplexity, measured latency and membership AUC side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(FIGURE_WIDTH, 0.3 * len(table) + 1.6))
    names = table["model"].tolist()
    y = np.arange(len(names))
    axes[0].barh(y - 0.2, table["perplexity_private_before"], height=0.4, label="before fine-tuning", color="tab:gray")
    axes[0].barh(y + 0.2, table["perplexity_private"], height=0.4, label="after DP-LoRA", color="tab:blue")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("held-out perplexity (log)")
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1, frameon=False)
    axes[1].barh(y - 0.2, table["prefill_ratio"], height=0.4, label="prefill")
    axes[1].barh(y + 0.2, table["decode_ratio"], height=0.4, label="decode")
    axes[1].axvline(1.0, ls="--", color="gray")
    axes[1].set_xlabel("time relative to dense")
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    axes[2].barh(y, table["mia_auc_reference"], height=0.5, color="tab:purple")
    axes[2].axvline(0.5, ls=":", color="gray")
    axes[2].set_xlabel("membership AUC (0.5 = chance)")
    for ax in axes:
        ax.set_yticks(y)
        ax.set_yticklabels(names if ax is axes[0] else [])
        ax.invert_yaxis()
    eps = float(table["target_epsilon"].iloc[0])
    fig.suptitle(f"Compressed models, DP fine-tuned at ε = {eps:g}")
    fig.tight_layout()
    return fig


def pruning_healed(table: pd.DataFrame) -> plt.Figure:
    """Each layer-removal strategy at the paper's depth: held-out perplexity before and after DP healing
    (log scale), the healed value with its 95% interval."""
    fig, ax = plt.subplots(figsize=(FIGURE_WIDTH / 2, 0.35 * len(table) + 1.3))
    y = np.arange(len(table))
    ax.scatter(table["perplexity_private_before"], y, marker="o", facecolors="none", edgecolors="tab:gray",
               label="before healing", zorder=3)
    after = table["perplexity_private"].to_numpy(dtype=float)
    low = table.get("perplexity_private_low", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
    high = table.get("perplexity_private_high", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
    err = np.vstack([np.where(np.isfinite(low), after - low, 0.0), np.where(np.isfinite(high), high - after, 0.0)])
    ax.errorbar(after, y, xerr=err, fmt="o", color="tab:blue", capsize=3, label="after DP-LoRA (95% interval)",
                zorder=4)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(table["strategy"])
    ax.invert_yaxis()
    ax.set_xlabel("held-out perplexity (log)")
    eps, k = float(table["target_epsilon"].iloc[0]), int(table["removed"].iloc[0])
    ax.set_title(f"{k} layers removed, healed at ε = {eps:g}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=1, frameon=False)
    fig.tight_layout()
    return fig
