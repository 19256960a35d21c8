"""Differentially private layer selection, composed with DP-SGD fine-tuning.

The layer-similarity statistics are computed from private text, so the
pruning decision can leak. Private selection is one Gaussian mechanism:

1. each record ``x`` contributes ``b(x)``, its per-layer Block Influence
   (ShortGPT, Men et al. 2024: ``1 - cos(h_i, h_{i+1})`` averaged over the
   record's tokens), a vector of ``L`` values;
2. a public reference ``p`` (the same statistic on public general English)
   is subtracted and the residual clipped to L2 norm ``C``; the record's
   vector is ``(clip(b(x) - p), C)`` — the last entry counts records — whose
   norm is at most ``C·√2``, the sensitivity under adding or removing one
   record;
3. the sum over records is released with noise ``N(0, σ²·2C²·I)``; the
   server estimates the mean ``p + Σ / n̂`` from the noisy sum and noisy
   count, and removes the ``k`` layers with the smallest estimated Block
   Influence.

Subtracting ``p`` shrinks what must be clipped: on the embedded model raw
vectors have norm ≈ 1.07 (layer 0 dominates), residuals ≈ 0.1, so the same
ε buys ten times less noise. The noisy count keeps the record count private
too (no replace-one assumption).

A single Gaussian release with noise multiplier σ is a subsampled Gaussian
with sampling rate 1 and one step: Opacus's accountants take it as the
history entry ``(σ, 1.0, 1)``. When the same records are then used for
DP-SGD (history ``(σ_train, q, T)``), the end-to-end guarantee is the
composition of both histories in one accountant (:func:`end_to_end_epsilon`):
RDP adds per order, tighter than adding the two ε.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from prunepriv.compress.pruning import check_count
from prunepriv.compress.similarity import LayerCapture
from prunepriv.errors import PrivacyConfigError, PruningError
from prunepriv.lm.models import backbone
from prunepriv.lm.text import to_device
from prunepriv.privacy.accountant import rdp_epsilon, sigma_for_epsilon


@torch.inference_mode()
def record_block_influence(model, batches: Iterable[dict[str, torch.Tensor]]) -> np.ndarray:
    """(n_records, L) Block Influence of each record: 1 − mean token cos(h_i, h_{i+1})."""
    device = next(model.parameters()).device
    body = backbone(model)
    rows = []
    with LayerCapture(model) as capture:
        for batch in batches:
            batch = to_device(batch, device)
            body(**batch, use_cache=False)
            states = torch.nn.functional.normalize(capture.stacked(), dim=-1)          # (L+1, B, T, H)
            cos = (states[:-1] * states[1:]).sum(-1)                                   # (L, B, T)
            mask = batch["attention_mask"].to(cos.dtype)
            mean = (cos * mask[None]).sum(-1) / mask.sum(-1).clamp(min=1.0)[None]      # (L, B)
            rows.append((1.0 - mean).T.double().cpu().numpy())
    if not rows:
        raise PruningError("no records to score for private layer selection")
    return np.concatenate(rows)


def clip_rows(stats: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """Each row scaled to L2 norm at most ``clip``; returns the rows and the fraction clipped."""
    if not clip > 0:
        raise PrivacyConfigError(f"clipping norm must be > 0, got {clip}")
    norms = np.linalg.norm(stats, axis=1)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    return stats * scale[:, None], float(np.mean(norms > clip))


def noise_multiplier_for(epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """σ of a single Gaussian release meeting (ε, δ); 0 for ε = ∞ (no noise, no privacy)."""
    if not epsilon > 0:
        raise PrivacyConfigError(f"selection epsilon must be > 0 (or inf), got {epsilon}")
    if math.isinf(epsilon):
        return 0.0
    return sigma_for_epsilon(epsilon, delta, 1.0, 1, accountant, epsilon_tolerance=0.001)


def private_choice(residual_sum: np.ndarray, n_records: int, reference: np.ndarray, k: int, sigma: float,
                   clip: float, generator: np.random.Generator) -> list[int]:
    """The ``k`` layers with the smallest estimated mean Block Influence (sorted).

    ``residual_sum`` is Σ clip(b(x) − reference) over ``n_records`` records;
    with ``sigma > 0`` the sum and the count ``n·C`` get Gaussian noise of
    standard deviation ``sigma·C·√2`` before the mean is estimated.
    """
    check_count(k, len(residual_sum))
    total, count = np.asarray(residual_sum, dtype=float), float(n_records) * clip
    if sigma > 0:
        std = sigma * clip * math.sqrt(2.0)
        noise = generator.normal(0.0, std, size=len(total) + 1)
        total, count = total + noise[:-1], count + noise[-1]
    mean = np.asarray(reference, dtype=float) + total / max(count / clip, 1.0)
    return sorted(int(i) for i in np.argsort(mean, kind="stable")[:k])


@dataclass
class Composition:
    """What one accountant says about selection followed by fine-tuning on the same records."""

    delta: float
    selection_sigma: float
    selection_epsilon: float          # the selection alone, at ``delta``
    finetune_epsilon: float           # the fine-tuning alone, at ``delta``
    end_to_end_epsilon: float         # both, composed by the accountant
    accountant: str


def _history(selection_sigma: float, train_sigma: float, sample_rate: float, steps: int) -> list[tuple]:
    history = []
    if selection_sigma > 0:
        history.append((selection_sigma, 1.0, 1))
    if train_sigma > 0 and steps > 0:
        history.append((train_sigma, sample_rate, steps))
    return history


def composed_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of a sequence of (σ, q, steps) Gaussian mechanisms on one data set."""
    from opacus.accountants import PRVAccountant

    if not history:
        return 0.0
    with warnings.catch_warnings():                 # PRV at q = 1 takes log(0) on a branch it then discards
        warnings.simplefilter("ignore", RuntimeWarning)
        if accountant == "rdp":
            return rdp_epsilon(history, delta)
        acc = PRVAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta))


def end_to_end_epsilon(selection_sigma: float, train_sigma: float, sample_rate: float, steps: int,
                       delta: float, accountant: str = "rdp") -> Composition:
    """Compose private selection (σ_sel, one full release) with DP-SGD (σ, q, T) at one δ.

    A σ of 0 means that mechanism is not private: its ε, and the end-to-end
    ε, are infinite.
    """
    if selection_sigma < 0 or train_sigma < 0:
        raise PrivacyConfigError("noise multipliers must be >= 0 (0: not private)")
    sel = composed_epsilon(_history(selection_sigma, 0.0, 1.0, 0), delta, accountant) if selection_sigma else math.inf
    tune = composed_epsilon(_history(0.0, train_sigma, sample_rate, steps), delta, accountant) if train_sigma else math.inf
    both = (composed_epsilon(_history(selection_sigma, train_sigma, sample_rate, steps), delta, accountant)
            if selection_sigma and train_sigma else math.inf)
    return Composition(delta, selection_sigma, sel, tune, both, accountant)


def selection_frequencies(choices: list[list[int]], num_layers: int) -> np.ndarray:
    """Fraction of draws that removed each layer."""
    counts = np.zeros(num_layers)
    for layers in choices:
        counts[layers] += 1
    return counts / max(1, len(choices))
