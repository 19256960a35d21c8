"""DP iterative magnitude pruning (DPIMP), adapted to LoRA fine-tuning.

Anchor: Mireshghallah, Backurs, Inan, Wutschitz and Kulkarni, "Differentially
private model compression", NeurIPS 2022, unstructured DPIMP: the model is
fine-tuned with DP-SGD and, at a schedule, the smallest-magnitude weights of
the *DP-trained* model are pruned, sparsity rising round by round to the
target while DP training continues. Every mask is computed from weights that
DP-SGD produced, so it is post-processing: the sparse model has the ε of the
one DP-SGD run (same σ, q and steps as any other run at that ε).

Adapted here to LoRA (the authors fine-tune every weight): the DP-trained
weights are ``W + ΔW`` with ``ΔW`` the LoRA update. At each round the update is
folded into the frozen weights, every decoder linear keeps its largest-
magnitude ``1 − s_j`` weights (per matrix, as :func:`prunepriv.compress.sparsity.magnitude_masks`),
``lora_B`` is reset to zero (and the optimizer state of the LoRA weights with
it) and DP training goes on. Round ``j`` of ``R`` comes after
``⌊j·T/(R+1)⌋`` of the run's ``T`` steps at sparsity ``s_j = j·s/R``, so the
last round still has ``T/(R+1)`` steps of healing; at the end the update is
folded once more and the masks are recomputed at ``s`` (:func:`deploy`): the
deployed model is a plain model with exactly that sparsity in its decoder
linears, LoRA included. Only the LoRA subspace can heal what a round
removes, which is weaker than the authors' full DP fine-tuning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from prunepriv.compress.sparsity import check_sparsity, keep_top, prunable_linears


def base_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The decoder's own linears of a (LoRA-wrapped) model: ``base_layer`` inside a LoRA layer, never
    ``lora_A``/``lora_B``; named as :func:`~prunepriv.compress.sparsity.prunable_linears` names them unwrapped."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model      # a PeftModel
    return {name.replace(".base_layer", ""): m for name, m in prunable_linears(model).items() if ".lora_" not in name}


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """Every peft LoRA layer of ``model`` (a module with ``lora_A``, ``lora_B`` and ``get_delta_weight``)."""
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_delta_weight") and m.lora_A]


@torch.no_grad()
def fold_lora(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Add each LoRA update to its frozen weight and zero ``lora_B`` (the model computes the same function);
    the LoRA weights' optimizer state is dropped, so the next update starts afresh."""
    for layer in lora_layers(model):
        for adapter in layer.lora_A:
            base = layer.get_base_layer()
            base.weight.add_(layer.get_delta_weight(adapter).to(base.weight.dtype))
            layer.lora_B[adapter].weight.zero_()
            if optimizer is not None:
                for p in (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight):
                    optimizer.state.pop(p, None)


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float) -> float:
    """Zero the smallest-|W| ``sparsity`` of every decoder linear (per matrix); returns the sparsity reached."""
    sparsity = check_sparsity(sparsity)
    zeros = total = 0
    for m in base_linears(model).values():
        w = m.weight
        keep = keep_top(w.detach().abs().float().cpu(), w.numel() - int(math.floor(sparsity * w.numel())), None)
        w.mul_(keep.to(device=w.device, dtype=w.dtype))
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def schedule(total_steps: int, rounds: int, target: float) -> dict[int, float]:
    """``{step: sparsity}``: round ``j`` of ``rounds`` after ``⌊j·T/(rounds+1)⌋`` steps (at least 1) at ``j·target/rounds``."""
    if rounds < 1:
        raise ValueError(f"DPIMP needs at least one round, got {rounds}")
    events: dict[int, float] = {}
    for j in range(1, rounds + 1):
        events[max(1, (j * total_steps) // (rounds + 1))] = target * j / rounds
    return events


@dataclass
class DPIMP:
    """The step hook of a DPIMP run (:func:`prunepriv.privacy.train.finetune` ``after_step``)."""

    rounds: int
    target: float
    history: list[dict] = field(default_factory=list)   # one entry per round: step, asked and reached sparsity

    def __call__(self, trainer) -> None:
        events = schedule(trainer.plan.total_steps, self.rounds, self.target)
        if trainer.step in events:
            fold_lora(trainer.peft_model, trainer.base_optimizer)
            reached = magnitude_prune(trainer.peft_model, events[trainer.step])
            self.history.append({"step": trainer.step, "sparsity": events[trainer.step], "reached": reached})


def deploy(peft_model: nn.Module, target: float) -> tuple[nn.Module, float]:
    """The deployed DPIMP model: the last LoRA update folded in, masks recomputed at ``target``, LoRA
    removed; returns the plain model and the sparsity of its decoder linears."""
    fold_lora(peft_model)
    model = peft_model.unload()                     # lora_B is zero: the function is unchanged
    return model, magnitude_prune(model, target)
