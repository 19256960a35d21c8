"""Wanda as its authors' code runs it: layer by layer, each decoder layer's
statistics taken on calibration activations that passed through the layers
already pruned.

Anchor: Sun et al. 2024, "A simple and effective pruning approach for large
language models", official code ``locuslab/wanda`` ``lib/prune.py:prune_wanda``:
for decoder layer ``i`` the inputs of its linear layers are recorded while the
calibration activations run through layer ``i`` (still dense), every linear of
layer ``i`` is pruned (score ``|W_ij| · ‖X_j‖₂``, compared within each output
row), and layer ``i`` — now pruned — is run again to give the inputs of layer
``i + 1``. (:func:`prunepriv.compress.sparsity.wanda_masks` on
:func:`~prunepriv.compress.sparsity.input_norms` is the one-pass shortcut that
takes every layer's statistics from the dense model.)

The layers are replayed with the arguments the model itself passed them in
one dense forward pass (attention masks, position embeddings, per-layer
arguments such as GPT-2's ``head_mask[i]``): those do not depend on the
weights, so the replay equals a forward pass of the partly pruned model
(``tests/test_baselines.py`` checks it against full forward passes). Padding
is excluded from the statistics, as in :func:`~prunepriv.compress.sparsity.input_norms`.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
from torch import nn

from prunepriv.compress.sparsity import (
    Masks,
    apply_masks,
    check_sparsity,
    keep_top,
    masked_sumsq,
)
from prunepriv.errors import PruningError
from prunepriv.lm.models import decoder_layers
from prunepriv.lm.text import to_device


class LayerCall:
    """One batch's call of one decoder layer: the hidden states and every other argument."""

    def __init__(self, args: tuple, kwargs: dict[str, Any]) -> None:
        self.by_name = not args and "hidden_states" in kwargs
        self.hidden = kwargs["hidden_states"] if self.by_name else args[0]
        self.args = args[1:]
        self.kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``layer`` on ``hidden`` with this call's other arguments; the output hidden states."""
        out = layer(*self.args, hidden_states=hidden, **self.kwargs) if self.by_name else \
            layer(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


@torch.inference_mode()
def recorded_calls(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]
                   ) -> tuple[list[list[LayerCall]], list[torch.Tensor]]:
    """``calls[i][b]``: decoder layer ``i``'s call on batch ``b`` in a dense forward pass; each batch's attention mask."""
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    calls: list[list[LayerCall]] = [[] for _ in layers]
    masks: list[torch.Tensor] = []

    def recorder(i: int):
        def hook(module, args, kwargs):
            calls[i].append(LayerCall(args, kwargs))
        return hook

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch in batches:
            batch = to_device(batch, device)
            masks.append(batch["attention_mask"])
            model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if not masks or not int(sum(m.sum() for m in masks)):
        raise PruningError("no tokens to compute Wanda's input norms on")
    return calls, masks


def layer_input_sumsq(layer: nn.Module, calls: list[LayerCall], hidden: list[torch.Tensor],
                      masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-input-feature sum of squares of each ``nn.Linear`` input of ``layer`` over the batches (no padding)."""
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
    sumsq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}
    current: list[torch.Tensor] = []

    def hook_for(name: str):
        def hook(module, args):
            sumsq[name] += masked_sumsq(args[0], current[0])
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in linears.items()]
    try:
        for call, h, mask in zip(calls, hidden, masks):
            current[:] = [mask]
            call.run(layer, h)
    finally:
        for handle in handles:
            handle.remove()
    return sumsq


def row_masks(layer: nn.Module, sumsq: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Wanda's masks of one layer's linears: keep the top ``1 - sparsity`` of ``|W_ij| · ‖X_j‖₂`` in each row."""
    out = {}
    for name, m in layer.named_modules():
        if isinstance(m, nn.Linear):
            scores = m.weight.detach().abs().float().cpu() * sumsq[name].sqrt().float()[None, :]
            out[name] = keep_top(scores, scores.shape[1] - int(math.floor(sparsity * scores.shape[1])), 1)
    return out


@torch.inference_mode()
def sequential_wanda_masks(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], sparsity: float) -> Masks:
    """Wanda masks of every decoder linear (named as :func:`~prunepriv.compress.sparsity.prunable_linears`),
    layer by layer on activations through the already pruned layers; ``model`` is left unchanged."""
    sparsity = check_sparsity(sparsity)
    work = copy.deepcopy(model).eval()
    calls, masks = recorded_calls(work, batches)
    hidden = [call.hidden for call in calls[0]]
    out: Masks = {}
    layers = decoder_layers(work)
    for i, layer in enumerate(layers):
        named = {f"{i}.{name}": mask
                 for name, mask in row_masks(layer, layer_input_sumsq(layer, calls[i], hidden, masks), sparsity).items()}
        out.update(named)
        apply_masks(work, named)
        if i + 1 < len(layers):                                 # the pruned layer's outputs feed the next one
            hidden = [call.run(layer, h) for call, h in zip(calls[i], hidden)]
    if not out:
        raise PruningError("the model's decoder layers hold no nn.Linear modules to sparsify")
    return out
