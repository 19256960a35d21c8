"""Unstructured sparsity of the decoder's linear layers: magnitude and Wanda.

Anchors: magnitude pruning (Han et al. 2015), layer-wise threshold per
weight matrix; Wanda (Sun et al. 2024), score ``|W_ij| · ‖X_j‖₂`` with
``‖X_j‖₂`` the L2 norm of input feature ``j`` over the calibration tokens,
compared within each output row. Both are the compression half of the
one-shot sparsity + DP-LoRA baseline (a simplified stand-in for DP model
compression, Mireshghallah et al. NeurIPS 2022, whose DP iterative magnitude
pruning recomputes masks from DP-trained weights) and Wanda masks are what
FedPrLLM's clients share (:mod:`prunepriv.privacy.federated`).

A mask is ``True`` where a weight is kept. Only ``nn.Linear`` modules inside
the decoder layers are pruned (not embeddings, not the LM head).
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn

from prunepriv.errors import PruningError
from prunepriv.lm.models import decoder_layers
from prunepriv.lm.text import to_device

Masks = dict[str, torch.Tensor]


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder layers, named ``"{layer}.{path}"`` (e.g. ``"3.mlp.up_proj"``)."""
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                out[f"{i}.{name}"] = module
    if not out:
        raise PruningError("the model's decoder layers hold no nn.Linear modules to sparsify")
    return out


def check_sparsity(sparsity: float) -> float:
    """Sparsity must be in [0, 1)."""
    if not 0.0 <= float(sparsity) < 1.0:
        raise PruningError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


class InputNorms:
    """Per-input-feature sum of squares of every prunable linear's input (padding excluded).

    ``sumsq[name]`` has one entry per input feature; ``tokens`` counts the
    tokens seen. Sums from several clients add up to the pooled statistic.
    """

    def __init__(self, sumsq: dict[str, torch.Tensor], tokens: int) -> None:
        self.sumsq, self.tokens = sumsq, tokens

    def norms(self) -> dict[str, torch.Tensor]:
        """``‖X_j‖₂`` of each input feature."""
        return {k: v.sqrt() for k, v in self.sumsq.items()}

    def __add__(self, other: "InputNorms") -> "InputNorms":
        return InputNorms({k: v + other.sumsq[k] for k, v in self.sumsq.items()}, self.tokens + other.tokens)


def masked_sumsq(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-feature sum of squares of ``x`` (``(..., features)``; OPT flattens batch and sequence) over the
    tokens where ``mask`` (``(batch, sequence)``) is 1, in float64 on the CPU."""
    flat = x.reshape(-1, x.shape[-1]).float()
    keep = mask.reshape(-1).to(device=flat.device, dtype=flat.dtype)
    return (flat.pow(2) * keep[:, None]).sum(0).double().cpu()


@torch.inference_mode()
def input_norms(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> InputNorms:
    """Wanda's activation statistics of ``model`` on ``batches``."""
    device = next(model.parameters()).device
    linears = prunable_linears(model)
    sumsq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}
    mask: list[torch.Tensor] = []
    handles = []

    def hook_for(name: str):
        def hook(module, args):
            sumsq[name] += masked_sumsq(args[0], mask[0])
        return hook

    for name, module in linears.items():
        handles.append(module.register_forward_pre_hook(hook_for(name)))
    tokens = 0
    try:
        for batch in batches:
            batch = to_device(batch, device)
            mask[:] = [batch["attention_mask"].float()]
            model(**batch, use_cache=False)
            tokens += int(batch["attention_mask"].sum())
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise PruningError("no tokens to compute Wanda's input norms on")
    return InputNorms(sumsq, tokens)


def keep_top(scores: torch.Tensor, keep: int, dim: int | None) -> torch.Tensor:
    """Boolean mask keeping exactly the ``keep`` highest scores per row (``dim=1``) or overall (``None``).

    Scores tied at the threshold (common in weights dequantized from a
    4-bit GGUF) are kept in index order until the count is exact.
    """
    flat = scores.reshape(1, -1) if dim is None else scores
    drop = flat.shape[1] - keep
    if drop <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, drop, dim=1, keepdim=True).values
    mask = flat > threshold
    missing = keep - mask.sum(dim=1, keepdim=True)                  # tied entries still to keep
    tied = flat == threshold
    mask |= tied & (torch.cumsum(tied.to(torch.int32), dim=1) <= missing)
    return mask.reshape(scores.shape)


def magnitude_masks(model: nn.Module, sparsity: float) -> Masks:
    """Keep the largest-|W| ``1 - sparsity`` of each weight matrix (layer-wise threshold)."""
    sparsity = check_sparsity(sparsity)
    out = {}
    for name, m in prunable_linears(model).items():
        w = m.weight.detach().abs().float().cpu()
        out[name] = keep_top(w, w.numel() - int(math.floor(sparsity * w.numel())), None)
    return out


def wanda_scores(model: nn.Module, stats: InputNorms) -> dict[str, torch.Tensor]:
    """``|W_ij| · ‖X_j‖₂`` of every prunable linear."""
    norms = stats.norms()
    return {name: m.weight.detach().abs().float().cpu() * norms[name].float()[None, :]
            for name, m in prunable_linears(model).items()}


def wanda_masks(model: nn.Module, stats: InputNorms, sparsity: float) -> Masks:
    """Wanda: keep the highest-scoring ``1 - sparsity`` of each output row."""
    sparsity = check_sparsity(sparsity)
    out = {}
    for name, scores in wanda_scores(model, stats).items():
        out[name] = keep_top(scores, scores.shape[1] - int(math.floor(sparsity * scores.shape[1])), 1)
    return out


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero the pruned weights of ``model`` in place; returns ``model``."""
    linears = prunable_linears(model)
    missing = sorted(set(masks) - set(linears))
    if missing:
        raise PruningError(f"masks name modules the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, mask in masks.items():
            weight = linears[name].weight
            if mask.shape != weight.shape:
                raise PruningError(f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
    return model


def sparsified(model: nn.Module, masks: Masks) -> nn.Module:
    """A masked copy of ``model``."""
    return apply_masks(copy.deepcopy(model), masks)


def mask_sparsity(masks: Masks) -> float:
    """Fraction of pruned weights over all masked matrices."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(torch.count_nonzero(m)) for m in masks.values()) / total


def mask_agreement(a: Masks, b: Masks) -> float:
    """Intersection over union of the pruned weights of two masks (1 = same weights pruned)."""
    inter = union = 0
    for name in a:
        size = a[name].numel()
        inter += size - int(torch.count_nonzero(a[name] | b[name]))    # pruned by both
        union += size - int(torch.count_nonzero(a[name] & b[name]))    # pruned by either
    return inter / union if union else 1.0


def nonzero_parameters(model: nn.Module) -> int:
    """Parameters that are not exactly zero (tied weights counted once)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())
