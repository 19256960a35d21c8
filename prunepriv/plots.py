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
