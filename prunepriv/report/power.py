"""What a null result could have detected: the smallest true effect an interval of this width would
reveal with 80% power at the 5% level (a two-sided z test: (z_{0.975} + z_{0.8}) standard errors, the
standard error read off the 95% interval's width). A result whose interval contains its no-effect value
is reported with this number beside it, never as "no effect"."""
from __future__ import annotations

import math

Z_LEVEL = 1.959964      # two-sided 5%
Z_POWER = 0.841621      # 80% power


def detectable_effect(interval: tuple[float, float] | None, null: float | None) -> float | None:
    """The smallest distance from ``null`` detectable with 80% power, when the 95% ``interval`` contains
    ``null`` (a null result); ``None`` when the interval excludes it or either is missing."""
    if interval is None or null is None:
        return None
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)) or not low <= null <= high:
        return None
    return (Z_LEVEL + Z_POWER) * (high - low) / (2 * Z_LEVEL)


def describe(interval: tuple[float, float] | None, null: float | None) -> str:
    """``"null result: effects ≥ 0.12 detectable (80% power)"`` for a null result, ``""`` otherwise."""
    effect = detectable_effect(interval, null)
    return "" if effect is None else f"null result: effects ≥ {effect:.3g} detectable (80% power)"
