"""Structural layer removal and the strategies that choose the layers.

Strategies (each returns original layer indices to remove):

* ``cosine`` — the paper's reading: remove the ``k`` layers whose output is
  most similar to their input (highest adjacent cosine; lowest ShortGPT
  Block Influence, Men et al. 2024);
* ``block`` — remove the ``k`` consecutive layers ``l..l+k-1`` with the
  smallest last-token angular distance between h[l] and h[l+k]
  (Gromov et al. 2024);
* ``last`` — the ``k`` deepest layers;
* ``random`` — ``k`` layers drawn with the profile's seed;
* ``greedy-loss`` — SLEB (Song et al. 2024): repeatedly remove the layer whose
  removal raises the calibration loss least.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from prunepriv.compress.similarity import LayerSimilarity
from prunepriv.config import STRATEGIES
from prunepriv.errors import PruningError
from prunepriv.lm.evaluation import next_token_nll
from prunepriv.lm.models import decoder_layers, set_decoder_layers
from prunepriv.lm.text import to_device
from prunepriv.progress import tqdm

KEPT_LAYERS_KEY = "prunepriv_kept_layers"


def check_layers(layers: Iterable[int], num_layers: int) -> list[int]:
    """Validate a removal set: integers in range, no duplicates, at least one layer kept."""
    chosen = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise PruningError(f"layer index {layer!r} is not an integer")
        if not 0 <= int(layer) < num_layers:
            raise PruningError(f"layer index {int(layer)} out of range: the model has layers 0..{num_layers - 1}")
        chosen.append(int(layer))
    if len(set(chosen)) != len(chosen):
        raise PruningError(f"layer indices repeat: {sorted(chosen)}")
    check_count(len(chosen), num_layers)
    return sorted(chosen)


def check_count(k: int, num_layers: int) -> None:
    """Removing ``k`` of ``num_layers`` must leave at least one layer."""
    if k < 0:
        raise PruningError(f"cannot remove a negative number of layers ({k})")
    if k >= num_layers:
        raise PruningError(f"cannot remove {k} layers: the model has {num_layers}; at most {num_layers - 1} can go")


# Config lists with one entry per decoder layer (other lists, e.g. eos_token_id, are left alone).
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")


def fold_inverse_layer_scale(layer: nn.Module, old_index: int, new_index: int) -> None:
    """GPT-2's ``scale_attn_by_inverse_layer_idx`` divides attention scores by ``layer_idx + 1``,
    computed from the index when the model is built. After a layer moves from ``old_index`` to
    ``new_index``, a reloaded model divides by ``new_index + 1``: fold ``(new + 1) / (old + 1)``
    into the query projection and set the in-memory scale to what a reload computes, so that
    the pruned model is the same function before and after ``save_pretrained``."""
    attn = getattr(layer, "attn", None)
    if not getattr(attn, "scale_attn_by_inverse_layer_idx", False) or old_index == new_index:
        return
    ratio = (new_index + 1) / (old_index + 1)
    width = attn.embed_dim                                  # c_attn's output is [q | k | v]
    with torch.no_grad():
        attn.c_attn.weight[:, :width] *= ratio
        attn.c_attn.bias[:width] *= ratio
    attn.scaling /= ratio


def remove_layers(model: nn.Module, layers: Iterable[int]) -> nn.Module:
    """Remove decoder layers in place and keep the model consistent.

    The modules are dropped, every ``layer_idx`` is re-indexed (KV cache),
    ``config.num_hidden_layers`` and per-layer config lists (``layer_types``)
    are updated, and the original indices of the kept layers are recorded in
    ``config.prunepriv_kept_layers`` so that ``save_pretrained`` and
    ``from_pretrained`` round-trip. Returns ``model``.
    """
    current = decoder_layers(model)
    num_layers = len(current)
    removed = set(check_layers(layers, num_layers))
    keep = [i for i in range(num_layers) if i not in removed]
    config = model.config
    original = list(getattr(config, KEPT_LAYERS_KEY, None) or range(num_layers))
    set_decoder_layers(model, nn.ModuleList([current[i] for i in keep]))
    for new_index, (old_index, layer) in enumerate(zip(keep, decoder_layers(model))):
        fold_inverse_layer_scale(layer, old_index, new_index)
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == num_layers:
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    setattr(config, KEPT_LAYERS_KEY, [original[i] for i in keep])
    return model


@contextlib.contextmanager
def skipping(model: nn.Module, layers: Iterable[int]):
    """Temporarily run the model with ``layers`` bypassed (no cache use)."""
    current = decoder_layers(model)
    removed = set(layers)
    set_decoder_layers(model, nn.ModuleList([l for i, l in enumerate(current) if i not in removed]))
    try:
        yield model
    finally:
        set_decoder_layers(model, current)


def choose_layers(
    strategy: str,
    k: int,
    num_layers: int,
    similarity: LayerSimilarity | None = None,
    seed: int = 0,
    greedy_order: Sequence[int] | None = None,
) -> list[int]:
    """The ``k`` layers a strategy removes (original indices, sorted)."""
    if strategy not in STRATEGIES:
        raise PruningError(f"unknown pruning strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    check_count(k, num_layers)
    if k == 0:
        return []
    if strategy in ("cosine", "block") and similarity is None:
        raise PruningError(f"strategy {strategy!r} needs layer-similarity statistics")
    if strategy == "cosine":
        order = np.argsort(-similarity.adjacent, kind="stable")
        return sorted(int(i) for i in order[:k])
    if strategy == "block":
        start = int(np.nanargmin(similarity.block[k - 1, : num_layers + 1 - k]))
        return list(range(start, start + k))
    if strategy == "last":
        return list(range(num_layers - k, num_layers))
    if strategy == "random":
        order = list(range(num_layers))
        random.Random(seed).shuffle(order)
        return sorted(order[:k])
    if greedy_order is None or len(greedy_order) < k:
        raise PruningError(f"greedy-loss needs a removal order of at least {k} layers (see greedy_loss_order)")
    return sorted(int(i) for i in greedy_order[:k])


@torch.inference_mode()
def calibration_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean next-token NLL over ``batches`` (padding masked)."""
    device = next(model.parameters()).device
    total = count = 0.0
    for batch in batches:
        batch = to_device(batch, device)
        nll, tokens = next_token_nll(model(**batch, use_cache=False).logits, batch["input_ids"],
                                     batch["attention_mask"])
        total += float(nll.sum())
        count += float(tokens.sum())
    return total / count


def greedy_loss_order(model: nn.Module, batches: list[dict[str, torch.Tensor]], k: int,
                      progress: bool = True) -> tuple[list[int], list[float]]:
    """SLEB: the first ``k`` layers removed greedily, with the loss after each.

    Each round scores every remaining layer by the calibration loss of the
    model without it and removes the cheapest. Cost: about ``k * L`` forward
    passes over the calibration batches.
    """
    num_layers = len(decoder_layers(model))
    check_count(k, num_layers)
    removed: list[int] = []
    losses: list[float] = []
    total = sum(num_layers - r for r in range(k))
    with tqdm(total=total, desc="greedy-loss (SLEB)", disable=not progress, leave=False) as bar:
        for _ in range(k):
            best, best_loss = -1, float("inf")
            for layer in range(num_layers):
                if layer in removed:
                    continue
                with skipping(model, removed + [layer]):
                    loss = calibration_loss(model, batches)
                bar.update(1)
                if loss < best_loss:
                    best, best_loss = layer, loss
            removed.append(best)
            losses.append(best_loss)
    return removed, losses
