"""Perplexity on held-out text (token-weighted, padding masked) with a cluster-bootstrap interval, and the
per-record training loss."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunepriv.lm.text import batches, to_device


@torch.inference_mode()
def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and token count per sequence (padding excluded)."""
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    logits = model(**batch, use_cache=False).logits
    total, count = next_token_nll(logits, batch["input_ids"], batch["attention_mask"])
    return total.cpu(), count.cpu()


@dataclass
class RecordScores:
    """Summed next-token NLL and predicted-token count of each record, and their perplexity."""

    nll: np.ndarray
    tokens: np.ndarray
    perplexity: float


def score_records(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 8) -> RecordScores:
    """Per-record NLLs of ``texts`` and exp(mean NLL over all their predicted tokens)."""
    total, count, nll, tokens = 0.0, 0.0, [], []
    for batch in batches(tokenizer, texts, max_length, batch_size):
        batch_nll, n = token_nll(model, batch)
        total += float(batch_nll.sum())
        count += float(n.sum())
        nll.append(batch_nll)
        tokens.append(n)
    if count == 0:
        raise ValueError("no tokens to score")
    return RecordScores(torch.cat(nll).double().numpy(), torch.cat(tokens).double().numpy(), math.exp(total / count))


def perplexity(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 8) -> float:
    """exp(mean NLL over all predicted tokens of ``texts``)."""
    return score_records(model, tokenizer, texts, max_length, batch_size).perplexity


def perplexity_interval(scores: RecordScores, clusters: list[str], draws: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the perplexity, resampling ``clusters`` (e.g. patients: their
    records are not independent) with replacement (Field & Welsh 2007, the cluster bootstrap)."""
    if len(clusters) != len(scores.nll):
        raise ValueError(f"{len(clusters)} cluster labels for {len(scores.nll)} records")
    _, member = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    nll, tokens = np.bincount(member, weights=scores.nll), np.bincount(member, weights=scores.tokens)
    picks = np.random.default_rng(seed).integers(0, len(nll), size=(draws, len(nll)))
    values = np.exp(nll[picks].sum(1) / np.maximum(tokens[picks].sum(1), 1.0))
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_ratio_interval(nll_a, nll_b, tokens, clusters: list[str], draws: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """Perplexity of model A over that of model B on the *same* records, and its percentile interval from a
    cluster bootstrap that resamples each patient's records for both models at once (a paired comparison:
    the records' difficulty, shared by both, cancels). Returns (ratio, low, high); an interval excluding 1
    is a difference, overlapping unpaired intervals are not evidence either way."""
    _, member = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    a, b = np.bincount(member, weights=np.asarray(nll_a, float)), np.bincount(member, weights=np.asarray(nll_b, float))
    n = np.bincount(member, weights=np.asarray(tokens, float))
    picks = np.random.default_rng(seed).integers(0, len(n), size=(draws, len(n)))
    ratios = np.exp((a[picks].sum(1) - b[picks].sum(1)) / np.maximum(n[picks].sum(1), 1.0))
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(math.exp((a.sum() - b.sum()) / max(n.sum(), 1.0))), float(low), float(high)


def sequence_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-record mean next-token NLL, shape (B,): the fine-tuning loss (gradients flow)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    total, count = next_token_nll(out.logits, batch["input_ids"], batch["attention_mask"])
    return total / count.clamp(min=1.0)


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and token count per sequence, shape (B,) each, in fp32.

    Only the positions whose target is a real token are scored: their logits
    are gathered into one contiguous (tokens, vocab) block, upcast to fp32,
    and the log-softmax runs over its last dimension (the fast layout; a
    (B, V, T) transpose is several times slower on a CPU, and padding
    positions would be scored only to be masked out).
    """
    real = attention_mask[:, 1:].bool()
    rows = real.nonzero(as_tuple=True)[0]
    picked = logits[:, :-1][real].float()
    nll = nn.functional.cross_entropy(picked, input_ids[:, 1:][real], reduction="none")
    total = torch.zeros(real.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
    return total, real.sum(1).to(nll.dtype)
