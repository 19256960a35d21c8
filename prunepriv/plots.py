"""Figures: similarity heatmap, adjacent similarity, latency and perplexity
versus layers removed. Each function returns a matplotlib Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .similarity import LayerSimilarity

sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def similarity_heatmap(sim: LayerSimilarity, title: str = "") -> plt.Figure:
    """L+1 × L+1 mean token cosine similarity of layer representations."""
    fig, ax = plt.subplots(figsize=(7.5, 6.2))
    size = sim.matrix.shape[0]
    step = max(1, size // 10)
    sns.heatmap(sim.matrix, ax=ax, cmap="viridis", vmin=min(0.0, float(sim.matrix.min())), vmax=1.0,
                square=True, cbar_kws={"label": "mean token cosine similarity"},
                xticklabels=step, yticklabels=step)
    ax.set_xlabel("representation j (0 = embeddings, i = output of layer i−1)")
    ax.set_ylabel("representation i")
    ax.set_title(title or "Cosine similarity between layer representations")
    return fig


def adjacent_similarity(sim: LayerSimilarity, chosen: list[int], strategy: str = "cosine") -> plt.Figure:
    """Per-layer input/output cosine similarity, removed layers marked."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    layers = np.arange(sim.num_layers)
    ax.plot(layers, sim.adjacent, marker="o", ms=4, color="tab:blue", label="cos(input, output)")
    if chosen:
        ax.scatter(chosen, sim.adjacent[chosen], s=90, facecolors="none", edgecolors="tab:red", linewidths=2,
                   label=f"removed by '{strategy}' (k={len(chosen)})", zorder=3)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("adjacent cosine similarity")
    ax.set_title("How much each layer changes its input (high = redundant)")
    ax.legend(loc="lower right")
    return fig


def latency_vs_layers(frame: pd.DataFrame, device: str = "") -> plt.Figure:
    """Measured prefill/decode time ratios with the ideal (L-K)/L line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(frame["removed"], frame["ideal_ratio"], "k--", label="ideal (L−K)/L")
    ax.plot(frame["removed"], frame["prefill_ratio"], marker="o", label="prefill (measured)")
    ax.plot(frame["removed"], frame["decode_ratio"], marker="s", label="decode with KV cache (measured)")
    ax.set_xlabel("layers removed K")
    ax.set_ylabel("time relative to unpruned model")
    ax.set_title("Latency versus layers removed" + (f" ({device})" if device else ""))
    ax.legend()
    return fig


def perplexity_vs_layers(frame: pd.DataFrame) -> plt.Figure:
    """Perplexity versus layers removed, one line per strategy, two domains."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, column, title in zip(axes, ["perplexity_private", "perplexity_general"],
                                 ["held-out private text (clinical notes)", "general English text"]):
        sns.lineplot(data=frame, x="removed", y=column, hue="strategy", style="strategy", markers=True,
                     dashes=False, ax=ax)
        ax.set_yscale("log")
        ax.set_xlabel("layers removed K")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(title)
    fig.suptitle("Perplexity of the pruned model, before fine-tuning")
    fig.tight_layout()
    return fig


def utility_vs_epsilon(frame: pd.DataFrame) -> plt.Figure:
    """Held-out perplexity versus ε; non-private runs as their own marked point.

    Dashed lines: the same models before fine-tuning (for the pruned model,
    the gap between its dashed line and its curve is the "healing").
    """
    fig, ax = plt.subplots(figsize=(7, 4.4))
    finite = frame[np.isfinite(frame["target_epsilon"])]
    x_inf = (finite["target_epsilon"].max() if len(finite) else 1.0) * 3
    colors = dict(zip(sorted(frame["model"].unique(), reverse=True), ["tab:blue", "tab:orange"]))
    for model, group in frame.groupby("model"):
        color = colors[model]
        g = group[np.isfinite(group["target_epsilon"])].sort_values("target_epsilon")
        ax.plot(g["epsilon_rdp"], g["perplexity_private"], marker="o", color=color, label=f"{model}, DP-SGD")
        nonprivate = group[~np.isfinite(group["target_epsilon"])]
        if len(nonprivate):
            ax.scatter([x_inf], nonprivate["perplexity_private"], marker="*", s=220, color=color, zorder=3,
                       edgecolors="black", label=f"{model}, non-private (ε = ∞)")
        ax.axhline(group["perplexity_private_before"].iloc[0], ls="--", color=color, alpha=0.7,
                   label=f"{model}, before fine-tuning")
    ax.set_xscale("log")
    ticks = sorted(finite["epsilon_rdp"].unique()) if len(finite) else []
    ax.set_xticks(list(ticks) + [x_inf])
    ax.set_xticklabels([f"{t:.2g}" for t in ticks] + ["∞"])
    ax.minorticks_off()
    ax.set_xlabel("ε spent (RDP accountant of the run)")
    ax.set_ylabel("perplexity on held-out records")
    ax.set_title("Utility versus privacy")
    ax.legend(fontsize=8, loc="best")
    return fig


def training_curves(curves: pd.DataFrame) -> plt.Figure:
    """Training loss per step for every (model, ε) run."""
    models = sorted(curves["model"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        sns.lineplot(data=curves[curves["model"] == model], x="step", y="loss", hue="target_epsilon", ax=ax)
        ax.set_title(f"{model} model")
        ax.set_xlabel("logical step")
        ax.set_ylabel("training loss (mean per-record NLL)")
        ax.legend(title="target ε")
    fig.tight_layout()
    return fig


def _epsilon_positions(frame: pd.DataFrame) -> tuple[pd.Series, float, list[float]]:
    """x position of each run on a log ε axis; non-private runs sit right of the largest finite ε."""
    finite = frame.loc[np.isfinite(frame["target_epsilon"]), "epsilon_rdp"]
    x_inf = float(finite.max()) * 3 if len(finite) else 1.0
    x = frame["epsilon_rdp"].where(np.isfinite(frame["target_epsilon"]), x_inf)
    return x, x_inf, sorted(finite.unique())


MEMORIZATION_PANELS = (
    ("extraction_excess", None, "extraction: F1(train) − F1(held-out)", 0.0),
    ("prefix_pii_train", "prefix_pii_heldout", "PII completed by prefix attack", None),
    ("exposure_trained", "exposure_heldout", "canary exposure (bits)", "exposure_chance"),
    ("mia_auc_reference", None, "membership inference AUC (reference ratio)", 0.5),
)


def epsilon_vs_memorization(table: pd.DataFrame) -> plt.Figure:
    """One panel per memorization metric versus ε: pruned and unpruned lines,
    non-private runs as stars, controls dashed (held-out) or dotted (chance)."""
    frame = table.copy()
    frame["x"], x_inf, ticks = _epsilon_positions(frame)
    colors = dict(zip(sorted(frame["model"].unique(), reverse=True), ["tab:blue", "tab:orange"]))
    fig, axes = plt.subplots(1, len(MEMORIZATION_PANELS), figsize=(4.2 * len(MEMORIZATION_PANELS), 3.8))
    for ax, (metric, control, label, chance) in zip(axes, MEMORIZATION_PANELS):
        for model, group in frame.groupby("model"):
            g = group.sort_values("x")
            color = colors[model]
            ax.plot(g["x"], g[metric], marker="o", color=color, label=f"{model}: trained data")
            private = g[~np.isfinite(g["target_epsilon"])]
            ax.scatter(private["x"], private[metric], marker="*", s=200, color=color, edgecolors="black", zorder=3)
            if control:
                ax.plot(g["x"], g[control], ls="--", marker="x", color=color, alpha=0.7,
                        label=f"{model}: held-out control")
        if isinstance(chance, str):
            ax.axhline(float(frame[chance].iloc[0]), ls=":", color="gray", label="chance")
        elif chance is not None:
            ax.axhline(chance, ls=":", color="gray", label="chance")
        ax.set_xscale("log")
        ax.set_xticks(list(ticks) + [x_inf])
        ax.set_xticklabels([f"{t:.2g}" for t in ticks] + ["∞"])
        ax.minorticks_off()
        ax.set_xlabel("ε (RDP accountant; ∞ = non-private)")
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=7, loc="best")
    axes[2].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def audit_vs_accountant(audit: pd.DataFrame) -> plt.Figure:
    """The one-run audit's ε lower bound against the accountant's ε (private runs)."""
    frame = audit[np.isfinite(audit["target_epsilon"])]
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    for model, group in frame.groupby("model"):
        ax.scatter(group["epsilon_rdp_at_audit_delta"], group["epsilon_lower_bound"], s=60, label=model)
    top = float(max(frame["epsilon_rdp_at_audit_delta"].max(), 1.0)) if len(frame) else 1.0
    ax.plot([0, top], [0, top], ls="--", color="gray", label="lower bound = accountant ε")
    ax.set_xlabel(f"accountant ε (RDP) at δ = {audit['audit_delta'].iloc[0]:.0e}")
    ax.set_ylabel(f"audit lower bound on ε ({int(round(100 * audit['confidence'].iloc[0]))}% confidence)")
    ax.legend(fontsize=8)
    return fig
