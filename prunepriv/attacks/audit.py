"""Empirical privacy audit with one training run (Steinke, Nasr & Jagielski,
"Privacy Auditing with One (1) Training Run", NeurIPS 2023, arXiv:2305.08846).

Setting (the paper's): ``m`` auditing examples, each included in the training
set independently with probability 1/2 (:func:`inclusion_draw` for simulations;
the pipeline's audit canaries are drawn in :func:`prunepriv.data.make_canaries`). After one run
the auditor scores every example, guesses "in" for some, "out" for others and
abstains on the rest. With ``r`` guesses of which ``v`` are correct:

* (ε, 0)-DP (the paper's pure-DP main theorem): ``W`` (the number of correct
  guesses) is stochastically dominated by ``Binomial(r, q)``, ``q = e^ε/(e^ε+1)``,
  so the p-value of ``v`` is ``β = P[Binomial(r, q) ≥ v]``.
* (ε, δ)-DP (the paper's approximate-DP main theorem, Section 5 of arXiv v1 —
  Theorem 5.2 / Corollary 5.4 there — whose tightest form is computed by
  ``p_value_DP_audit`` in Appendix D): with ``f(v) = P[Binomial(r, q) ≥ v]``::

      P[W ≥ v] ≤ f(v) + 2·m·δ · max_{i=1..v} (f(v − i) − f(v)) / i

  i.e. ``β + 2mδ·α`` with ``α = max_i P[v − i ≤ Binomial(r, q) < v] / i``.
  Note that δ is multiplied by ``m``, the number of *randomized auditing
  examples* (not ``r``): with ``m·δ`` not small the bound is vacuous.

The ε lower bound at confidence ``1 − p`` is the largest ε whose p-value is
still below ``p`` (Appendix D's ``get_eps_audit``): if the audited mechanism is
(ε, δ)-DP, the returned bound exceeds ε with probability at most ``p`` (over the
inclusion coin flips and the mechanism's own randomness).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Sequence

import numpy as np
from scipy import special  # scipy is a dependency of opacus (pinned)

from prunepriv.errors import AuditError

UNTESTABLE_CEILING = "ceiling"          # why a private run's verdict is untestable: its accountant's ε is above any bound
UNTESTABLE_BLIND = "blind control"      # ... or its model's non-private control saw nothing (bound 0)

__all__ = [
    "AuditError", "AuditResult", "attainable_bound", "audit", "audit_curve", "default_guess_grid", "epsilon_lower_bound",
    "inclusion_draw", "p_value",
]

_TOL = 1e-10          # bisection tolerance on ε (δ > 0)
_MAX_BISECT = 200


# --------------------------------------------------------------------------- validation

def _check_count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise AuditError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise AuditError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise AuditError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_delta(delta) -> float:
    delta = _check_real("delta", delta)
    if not 0.0 <= delta < 1.0:
        raise AuditError(f"delta must be in [0, 1), got {delta}")
    return delta


def _check_confidence(confidence) -> float:
    confidence = _check_real("confidence", confidence)
    if not 0.0 < confidence < 1.0:
        raise AuditError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def _check_counts(n_guesses, n_correct, n_examples) -> tuple[int, int, int]:
    m = _check_count("n_examples", n_examples, minimum=1)
    r = _check_count("n_guesses", n_guesses)
    v = _check_count("n_correct", n_correct)
    if v > r:
        raise AuditError(f"n_correct ({v}) cannot exceed n_guesses ({r})")
    if r > m:
        raise AuditError(f"n_guesses ({r}) cannot exceed n_examples ({m})")
    return r, v, m


# --------------------------------------------------------------------------- the bound

def _log_q(eps: float) -> tuple[float, float]:
    """log q and log(1 − q) for q = e^ε/(e^ε+1), stable for large ε."""
    return -float(np.logaddexp(0.0, -eps)), -float(np.logaddexp(0.0, eps))


def _tail(r: int, v: int, eps: float) -> float:
    """β = P[Binomial(r, q) ≥ v], q = e^ε/(e^ε+1)."""
    if v <= 0:
        return 1.0
    return float(special.betainc(v, r - v + 1, special.expit(eps)))


def _alpha(r: int, v: int, eps: float) -> float:
    """α = max_{i=1..v} P[v − i ≤ Binomial(r, q) ≤ v − 1] / i (Appendix D)."""
    if v <= 0:
        return 0.0
    log_q, log_1mq = _log_q(eps)
    k = np.arange(v - 1, -1, -1, dtype=float)          # v-1, v-2, ..., 0
    log_pmf = (special.gammaln(r + 1) - special.gammaln(k + 1) - special.gammaln(r - k + 1)
               + k * log_q + (r - k) * log_1mq)
    partial = np.cumsum(np.exp(log_pmf))                # P[v-i <= X <= v-1], i = 1..v
    return float(np.max(partial / np.arange(1, v + 1)))


def _p_value(r: int, v: int, m: int, eps: float, delta: float) -> float:
    beta = _tail(r, v, eps)
    if delta == 0.0:
        return min(beta, 1.0)
    return min(beta + 2.0 * m * delta * _alpha(r, v, eps), 1.0)


def p_value(n_guesses: int, n_correct: int, n_examples: int, epsilon: float,
            delta: float = 0.0) -> float:
    """Upper bound on P[W ≥ n_correct] for an (ε, δ)-DP mechanism (Steinke et al. 2023,
    (ε, δ) theorem / Appendix D ``p_value_DP_audit``): ``β + 2·m·δ·α`` capped at 1."""
    r, v, m = _check_counts(n_guesses, n_correct, n_examples)
    eps = _check_real("epsilon", epsilon)
    if eps < 0:
        raise AuditError(f"epsilon must be >= 0, got {eps}")
    return _p_value(r, v, m, eps, _check_delta(delta))


def _eps_pure(r: int, v: int, significance: float) -> float:
    """δ = 0: sup{ε ≥ 0 : P[Binomial(r, q_ε) ≥ v] < significance}.

    The tail is increasing in q, so the supremum is logit of the Clopper–Pearson
    lower limit ``q*`` solving ``P[Binomial(r, q*) ≥ v] = significance``."""
    if v == 0 or _tail(r, v, 0.0) >= significance:
        return 0.0
    q_star = float(special.betaincinv(v, r - v + 1, significance))
    return max(0.0, float(special.logit(q_star)))


def _eps_approx(r: int, v: int, m: int, delta: float, significance: float) -> float:
    """δ > 0: Appendix D's ``get_eps_audit`` (bisection keeping p(lo) < significance).

    The δ-term only adds to the p-value, so the δ = 0 answer brackets it from above."""
    hi = _eps_pure(r, v, significance)
    lo = 0.0
    if hi == 0.0 or _p_value(r, v, m, lo, delta) >= significance:
        return 0.0
    for _ in range(_MAX_BISECT):
        if hi - lo <= _TOL:
            break
        mid = 0.5 * (lo + hi)
        if _p_value(r, v, m, mid, delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo


def epsilon_lower_bound(n_guesses: int, n_correct: int, n_examples: int, delta: float = 0.0,
                        confidence: float = 0.95) -> float:
    """Largest ε for which ``n_correct`` of ``n_guesses`` correct is still "too many" for
    (ε, δ)-DP at the given confidence (Steinke, Nasr & Jagielski 2023).

    The p-value is the paper's (ε, δ) bound ``β + 2·m·δ·α`` (see the module docstring;
    Appendix D ``p_value_DP_audit``) with ``m = n_examples``; the returned ε is
    ``sup{ε ≥ 0 : p-value(ε) < 1 − confidence}`` (Appendix D ``get_eps_audit``):
    exact Clopper–Pearson inversion for δ = 0, bisection (to 1e-10, returning the
    end that is still rejected) for δ > 0. Returns 0.0 when nothing can be concluded.
    """
    r, v, m = _check_counts(n_guesses, n_correct, n_examples)
    delta = _check_delta(delta)
    significance = 1.0 - _check_confidence(confidence)
    if delta == 0.0:
        return _eps_pure(r, v, significance)
    return _eps_approx(r, v, m, delta, significance)


# --------------------------------------------------------------------------- auditing scores

@dataclass(frozen=True)
class AuditResult:
    """Outcome of :func:`audit` for the (k+, k−) split that gave the best bound."""

    epsilon_lower_bound: float
    n_examples: int     # m: randomized auditing examples
    n_guesses: int      # r = k_positive + k_negative
    n_correct: int      # v
    confidence: float   # family-wise confidence (over the whole guess grid)
    delta: float
    k_positive: int     # guessed "in": the k+ highest scores
    k_negative: int     # guessed "out": the k− lowest scores
    epsilon_attainable: float   # the best bound these guesses could give, every guess correct (the audit's power)


def default_guess_grid(n_examples: int) -> list[tuple[int, int]]:
    """(k+, k−) pairs tried by :func:`audit`: total guesses ≈ m/10, m/4, m/2, m
    (rounded half up), split equally (k− takes the odd one), de-duplicated, > 0."""
    m = _check_count("n_examples", n_examples, minimum=1)
    grid: list[tuple[int, int]] = []
    for frac in (0.1, 0.25, 0.5, 1.0):
        total = min(m, int(math.floor(m * frac + 0.5)))
        pair = (total // 2, total - total // 2)
        if total > 0 and pair not in grid:
            grid.append(pair)
    return grid


def _as_pairs(guesses, m: int) -> list[tuple[int, int]]:
    if guesses is None:
        return default_guess_grid(m)
    bad = AuditError(f"guesses must be a (k_positive, k_negative) pair or a non-empty list of pairs, "
                     f"got {guesses!r}")
    try:
        seq = [g for g in guesses]
    except TypeError:
        raise bad from None
    if len(seq) == 2 and all(isinstance(g, Integral) and not isinstance(g, bool) for g in seq):
        seq = [tuple(seq)]
    if not seq:
        raise bad
    pairs = []
    for pair in seq:
        try:
            kp, kn = pair
        except (TypeError, ValueError):
            raise AuditError(f"each guess must be a (k_positive, k_negative) pair, got {pair!r}") from None
        kp = _check_count("k_positive", kp)
        kn = _check_count("k_negative", kn)
        if kp + kn == 0:
            raise AuditError("k_positive + k_negative must be > 0")
        if kp + kn > m:
            raise AuditError(f"k_positive + k_negative ({kp + kn}) cannot exceed the number of examples ({m})")
        pairs.append((kp, kn))
    return pairs


def _check_arrays(scores, included) -> tuple[np.ndarray, np.ndarray]:
    try:
        s = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise AuditError("scores must be an array of numbers") from None
    inc = np.asarray(included)
    if s.ndim != 1 or inc.ndim != 1:
        raise AuditError(f"scores and included must be 1-D, got shapes {s.shape} and {inc.shape}")
    if s.size == 0:
        raise AuditError("scores is empty: at least one auditing example is needed")
    if s.size != inc.size:
        raise AuditError(f"scores ({s.size}) and included ({inc.size}) must have the same length")
    if np.isnan(s).any():
        raise AuditError("scores contain NaN")
    if inc.dtype != bool:
        if inc.dtype.kind not in "iuf" or not np.isin(inc, (0, 1)).all():
            raise AuditError("included must contain booleans (or 0/1)")
        inc = inc.astype(bool)
    return s, inc


def audit(scores: Sequence[float] | np.ndarray, included: Sequence[bool] | np.ndarray, delta: float,
          confidence: float = 0.95,
          guesses: tuple[int, int] | Sequence[tuple[int, int]] | None = None) -> AuditResult:
    """One-run audit (Steinke, Nasr & Jagielski 2023): guess, count, bound.

    ``scores``: higher means more likely a member; ``included``: the true inclusion bits,
    each drawn independently with probability 1/2 *before* training (:func:`inclusion_draw`),
    otherwise the bound is not valid. The auditor guesses "in" for the ``k+`` highest
    scores, "out" for the ``k−`` lowest and abstains on the rest; ties are broken by
    index (the order is ``(score descending, index ascending)``), never by ``included``.

    ``guesses``: one ``(k+, k−)`` pair, a list of pairs, or None for
    :func:`default_guess_grid`. With ``G`` pairs each bound is computed at confidence
    ``1 − (1 − confidence)/G`` (Bonferroni) and the best is returned, so the returned
    bound holds at the stated ``confidence`` despite the selection.
    """
    s, inc = _check_arrays(scores, included)
    delta = _check_delta(delta)
    confidence = _check_confidence(confidence)
    m = int(s.size)
    pairs = _as_pairs(guesses, m)
    per_test_confidence = 1.0 - (1.0 - confidence) / len(pairs)

    order = np.lexsort((np.arange(m), -s))          # score descending, then index ascending
    inc_sorted = inc[order]
    ceiling = attainable_bound(m, delta, confidence, pairs)
    best: AuditResult | None = None
    for kp, kn in pairs:
        correct = int(inc_sorted[:kp].sum()) + int((~inc_sorted[m - kn:]).sum())
        eps = epsilon_lower_bound(kp + kn, correct, m, delta, per_test_confidence)
        if best is None or eps > best.epsilon_lower_bound:
            best = AuditResult(eps, m, kp + kn, correct, confidence, delta, kp, kn, ceiling)
    assert best is not None
    return best


def audit_curve(scores: Sequence[float] | np.ndarray, included: Sequence[bool] | np.ndarray, delta: float,
                confidence: float = 0.95,
                guesses: tuple[int, int] | Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """Every guess count of :func:`audit`, not only the best: ``k_positive``, ``k_negative``, ``guesses``,
    ``correct``, the lower bound and the attainable bound (every guess correct) of that count, each at the
    Bonferroni-corrected confidence :func:`audit` uses — so that a reader sees how the evidence grows with
    the guesses, and that a bound of 0 is 0 at every count."""
    s, inc = _check_arrays(scores, included)
    delta, confidence = _check_delta(delta), _check_confidence(confidence)
    m = int(s.size)
    pairs = _as_pairs(guesses, m)
    per_test = 1.0 - (1.0 - confidence) / len(pairs)
    inc_sorted = inc[np.lexsort((np.arange(m), -s))]
    rows = []
    for kp, kn in pairs:
        correct = int(inc_sorted[:kp].sum()) + int((~inc_sorted[m - kn:]).sum())
        rows.append({"k_positive": kp, "k_negative": kn, "guesses": kp + kn, "correct": correct,
                     "epsilon_lower_bound": epsilon_lower_bound(kp + kn, correct, m, delta, per_test),
                     "epsilon_attainable": epsilon_lower_bound(kp + kn, kp + kn, m, delta, per_test)})
    return rows


def attainable_bound(n_examples: int, delta: float, confidence: float = 0.95,
                     guesses: tuple[int, int] | Sequence[tuple[int, int]] | None = None) -> float:
    """The largest lower bound :func:`audit` can return with ``n_examples`` examples and these guesses:
    every guess correct, at the same Bonferroni-corrected confidence. A bound is evidence only
    against an ε below this ceiling (Steinke et al. 2023, Figure 1: the bound grows with the guesses)."""
    m = _check_count("n_examples", n_examples, minimum=1)
    pairs = _as_pairs(guesses, m)
    per_test = 1.0 - (1.0 - _check_confidence(confidence)) / len(pairs)
    return max(epsilon_lower_bound(kp + kn, kp + kn, m, _check_delta(delta), per_test) for kp, kn in pairs)


def inclusion_draw(n: int, seed: int) -> list[bool]:
    """I.i.d. fair-coin inclusion bits from ``numpy.random.Generator(PCG64(seed))``
    (the paper's setting: each auditing example included with probability 1/2)."""
    n = _check_count("n", n)
    seed = _check_count("seed", seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    return [bool(b) for b in rng.random(n) < 0.5]
