"""Stopping a non-private run at a target utility: the utility-matched baseline of issue 14.

A DP model that learned less would memorize less even if privacy did nothing,
so its memorization is compared with a non-private run of the same model
stopped where its held-out perplexity reaches the DP model's
(:func:`prunepriv.stages.experiments.matched_runs`). A whole optimizer step
is too coarse a unit for that: one non-private step of the `smoke` profile
takes the held-out perplexity from the untuned value to below the DP
model's. So once a step reaches the target, the LoRA weights are placed
along that last step (previous + f · (current − previous)) at the smallest
fraction f, found by bisection, at which the target is still met: a model on
the non-private training path, at the DP model's utility.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

BISECTIONS = 8          # the fraction of the last step to 1/256


@dataclass(frozen=True)
class StopRule:
    """Stop once ``value(model) <= target`` (checked after every logical step, the model in eval mode).
    ``key`` names the rule in the run's digest, so a finished run is reloaded only under the same rule.
    A private run takes none: the rule reads data at every step that no accountant covers."""

    key: str
    value: Callable[[nn.Module], float]
    target: float

    def met(self, model: nn.Module) -> bool:
        return self.value(model) <= self.target


def check_rule(rule: StopRule, model: nn.Module, params: dict[str, nn.Parameter],
               previous: dict[str, torch.Tensor] | None) -> float | None:
    """``None`` while ``rule`` is not met; once it is, the fraction of the last step kept (1.0 without
    ``previous``, the LoRA weights before that step), the weights moved there by :func:`settle`."""
    model.eval()
    try:
        if not rule.met(model):
            return None
        return 1.0 if previous is None else settle(rule, model, params, previous)
    finally:
        model.train()


@torch.no_grad()
def settle(rule: StopRule, model: nn.Module, params: dict[str, nn.Parameter],
           previous: dict[str, torch.Tensor]) -> float:
    """Bisection along the last step for the smallest fraction f (to 2^-BISECTIONS) at which ``rule`` is
    met; the weights are left at previous + f · (current − previous) and f is returned."""
    current = {name: p.detach().clone() for name, p in params.items()}

    def place(fraction: float) -> None:
        for name, p in params.items():
            p.copy_(previous[name] + fraction * (current[name] - previous[name]))

    low, high = 0.0, 1.0                     # not met at the previous weights, met at the current ones
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        place(middle)
        low, high = (low, middle) if rule.met(model) else (middle, high)
    place(high)
    return high
