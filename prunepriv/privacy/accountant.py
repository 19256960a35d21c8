"""Opacus's RDP accounting with the one-step RDP curve computed once per (q, σ).

Opacus's ``RDPAccountant.get_epsilon`` recomputes the RDP of the subsampled
Gaussian at 150 orders on every call (about 0.15 s here, most of it in the
fractional orders' series), although a run's history is ``(σ, q, steps)`` and
the curve of ``steps`` steps is ``steps`` times the curve of one step
(``opacus.accountants.analysis.rdp.compute_rdp`` returns ``rdp * steps``).
Logging ε after every step cost more than a small model's step.

:func:`rdp_epsilon` keeps the one-step curve per ``(q, σ, orders)`` and
multiplies and sums in Opacus's order of operations, so its ε is bit-identical
to ``RDPAccountant``'s on the same history (a test checks it).
:func:`sigma_for_epsilon` caches Opacus's σ search, a pure function of its
arguments that the runs of one stage repeat. Opacus is imported on first use,
so that the command line starts without it.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


def default_orders() -> tuple[float, ...]:
    """The RDP orders of Opacus's ``RDPAccountant`` (its ``DEFAULT_ALPHAS``)."""
    from opacus.accountants import RDPAccountant

    return tuple(RDPAccountant.DEFAULT_ALPHAS)


@functools.lru_cache(maxsize=4096)
def one_step_rdp(sample_rate: float, noise_multiplier: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at each order (Mironov et al. 2019), as Opacus computes it."""
    from opacus.accountants.analysis import rdp as analysis

    curve = analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders))
    curve.setflags(write=False)
    return curve


def rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float,
                orders: tuple[float, ...] | None = None) -> float:
    """ε at ``delta`` of an Opacus accountant history of ``(σ, q, steps)`` entries (0 when empty)."""
    from opacus.accountants.analysis import rdp as analysis

    if not history:
        return 0.0
    orders = orders or default_orders()
    rdp = sum([one_step_rdp(q, sigma, orders) * steps for (sigma, q, steps) in history])
    eps, _ = analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def sigma_for_epsilon(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
                         epsilon_tolerance: float = 0.01) -> float:
    """Opacus's σ reaching ``epsilon`` at ``delta`` in ``steps`` steps of rate ``sample_rate`` (cached)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant, epsilon_tolerance=epsilon_tolerance))
