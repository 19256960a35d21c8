"""One-run privacy audit (Steinke, Nasr & Jagielski 2023): closed forms, the paper's
worked examples, monotonicity, validity and power by simulation, input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from prunepriv.attacks.audit import (
    AuditError,
    AuditResult,
    attainable_bound,
    audit,
    default_guess_grid,
    epsilon_lower_bound,
    inclusion_draw,
    p_value,
)
from prunepriv.errors import PrunePrivError

M = 1000
TRIALS = 200
# A valid 95% bound exceeds the truth in at most 5% of trials: allow the upper 99.9%
# quantile of Binomial(200, 0.05) (= 21) before calling it a failure.
MAX_EXCEED = int(stats.binom.ppf(0.999, TRIALS, 0.05))


def logit(q: float) -> float:
    return math.log(q / (1 - q))


# ------------------------------------------------------------------ closed forms and the paper

@pytest.mark.parametrize("r", [1, 5, 20, 100, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_all_correct_closed_form(r, confidence):
    # δ = 0, all r guesses right: p-value q^r, so the bound solves q^r = 1 - confidence.
    q = (1 - confidence) ** (1 / r)
    expected = max(0.0, logit(q))
    assert epsilon_lower_bound(r, r, M, 0.0, confidence) == pytest.approx(expected, abs=1e-6)


def test_paper_appendix_examples():
    # Worked values printed in the paper (arXiv:2305.08846, Appendix D / Section 7).
    assert epsilon_lower_bound(100, 75, 1000, 1e-4, 0.95) == pytest.approx(0.673, abs=1e-3)
    assert epsilon_lower_bound(1510, 1439, 100_000, 1e-5, 0.95) == pytest.approx(2.675, abs=1e-3)


def reference_p_value(r, v, m, eps, delta):
    """Independent transcription of the (ε, δ) bound with scipy.stats.binom."""
    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    below = stats.binom.cdf(v - 1, r, q)
    alpha = max([(below - stats.binom.cdf(v - 1 - i, r, q)) / i for i in range(1, v + 1)], default=0.0)
    return min(beta + 2 * m * delta * alpha, 1.0)


@pytest.mark.parametrize("r,v,m,eps,delta", [
    (100, 75, 1000, 0.5, 1e-4), (100, 75, 1000, 2.0, 0.0), (500, 420, 1000, 1.3, 1e-5),
    (40, 40, 100, 3.0, 1e-3), (10, 0, 10, 1.0, 1e-2), (300, 150, 300, 0.0, 1e-6),
])
def test_p_value_matches_reference(r, v, m, eps, delta):
    assert p_value(r, v, m, eps, delta) == pytest.approx(reference_p_value(r, v, m, eps, delta), rel=1e-7,
                                                         abs=1e-15)


@pytest.mark.parametrize("r,v,m,delta", [(100, 75, 1000, 1e-4), (500, 450, 1000, 1e-5), (60, 55, 500, 0.0),
                                         (1000, 930, 1000, 1e-6)])
def test_bound_is_the_rejection_boundary(r, v, m, delta):
    eps = epsilon_lower_bound(r, v, m, delta)
    assert eps > 0
    assert p_value(r, v, m, eps - 1e-6, delta) < 0.05          # still rejected just below
    assert p_value(r, v, m, eps + 1e-6, delta) >= 0.05         # no longer rejected just above


def test_delta_term_scales_with_number_of_examples():
    # Same guesses, more randomized examples: the 2·m·δ term grows, the bound shrinks.
    small = epsilon_lower_bound(100, 90, 100, 1e-4)
    large = epsilon_lower_bound(100, 90, 100_000, 1e-4)
    assert large < small
    assert epsilon_lower_bound(100, 90, 100_000, 0.0) == epsilon_lower_bound(100, 90, 100, 0.0)
    # 2·m·δ ≥ 1 makes every claim unfalsifiable at any useful confidence.
    assert epsilon_lower_bound(100, 100, 1000, 0.01) == 0.0


# ------------------------------------------------------------------ monotonicity

@pytest.mark.parametrize("delta", [0.0, 1e-6, 1e-4])
def test_monotone_in_correct_guesses(delta):
    for r in (10, 100, 400):
        bounds = [epsilon_lower_bound(r, v, M, delta) for v in range(0, r + 1, max(1, r // 100))]
        assert all(b2 >= b1 - 1e-9 for b1, b2 in zip(bounds, bounds[1:]))
        assert bounds[0] == 0.0 and bounds[-1] > 0.0


def test_monotone_in_confidence_and_delta():
    for r, v in [(100, 80), (500, 470), (50, 50)]:
        by_conf = [epsilon_lower_bound(r, v, M, 1e-5, c) for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)]
        assert all(b2 <= b1 + 1e-9 for b1, b2 in zip(by_conf, by_conf[1:]))
        assert by_conf[0] > by_conf[-1]
        by_delta = [epsilon_lower_bound(r, v, M, d) for d in (0.0, 1e-8, 1e-6, 1e-5, 1e-4, 1e-3)]
        assert all(b2 <= b1 + 1e-9 for b1, b2 in zip(by_delta, by_delta[1:]))
        assert by_delta[0] > by_delta[-1]


# ------------------------------------------------------------------ validity and power

def randomized_response(eps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ε-DP per example: the score is the inclusion bit, flipped w.p. 1/(1+e^ε)."""
    included = np.array(inclusion_draw(M, seed))
    flip = np.random.default_rng(10_000 + seed).random(M) < 1 / (1 + math.exp(eps))
    return (included ^ flip).astype(float), included


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0, 4.0])
def test_validity_randomized_response(eps):
    fixed, grid = [], []
    for seed in range(TRIALS):
        scores, included = randomized_response(eps, seed)
        # One fixed (k+, k-): W is exactly Binomial(500, e^ε/(1+e^ε)) here, the tight case.
        fixed.append(audit(scores, included, delta=0.0, guesses=(250, 250)).epsilon_lower_bound)
        grid.append(audit(scores, included, delta=0.0).epsilon_lower_bound)
    fixed, grid = np.array(fixed), np.array(grid)
    assert (fixed > eps).sum() <= MAX_EXCEED
    assert (grid > eps).sum() <= MAX_EXCEED
    # The tight single test should actually come near the truth (not a vacuous 0).
    assert np.median(fixed) > 0.5 * eps
    if eps == 4.0:
        assert grid.mean() > 2.5          # the audit has power: clearly > 1
        assert fixed.mean() > 2.5


def gaussian_delta(eps: float, mu: float) -> float:
    """δ(ε) of the Gaussian mechanism with sensitivity/noise ratio μ (Balle & Wang 2018)."""
    return stats.norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu)


@pytest.mark.parametrize("eps", [1.0, 4.0])
def test_validity_gaussian_mechanism(eps):
    delta = 1e-5
    mu = optimize.brentq(lambda mu: gaussian_delta(eps, mu) - delta, 1e-3, 50)
    bounds = []
    for seed in range(100):
        included = np.array(inclusion_draw(M, seed))
        scores = mu * included + np.random.default_rng(20_000 + seed).standard_normal(M)
        bounds.append(audit(scores, included, delta=delta).epsilon_lower_bound)
    bounds = np.array(bounds)
    assert (bounds > eps).sum() <= int(stats.binom.ppf(0.999, 100, 0.05))
    if eps == 4.0:
        assert bounds.mean() > 1.0


def test_chance_level_scores_give_no_evidence():
    rng = np.random.default_rng(7)
    bounds = np.array([
        audit(rng.standard_normal(M), inclusion_draw(M, seed), delta=1e-5).epsilon_lower_bound
        for seed in range(TRIALS)
    ])
    assert (bounds > 0).sum() <= MAX_EXCEED
    assert bounds.mean() < 0.05


# ------------------------------------------------------------------ audit mechanics

def test_guess_counting_and_tie_breaking_by_index():
    scores = [5.0, 1.0, 3.0, 3.0, 0.0, 2.0]
    included = [True, False, False, True, False, False]
    # order: idx0 (5), idx2 (3), idx3 (3), idx5 (2), idx1 (1), idx4 (0)
    res = audit(scores, included, delta=0.0, guesses=(2, 2))
    assert (res.k_positive, res.k_negative, res.n_guesses) == (2, 2, 4)
    assert res.n_correct == 1 + 0 + 1 + 1      # idx0 in ✓, idx2 in ✗, idx1 out ✓, idx4 out ✓
    # All scores tied: guesses follow index order, whatever `included` says.
    tied = np.zeros(4)
    assert audit(tied, [True, True, False, False], 0.0, guesses=(2, 2)).n_correct == 4
    assert audit(tied, [False, False, True, True], 0.0, guesses=(2, 2)).n_correct == 0


def test_audit_result_fields_and_perfect_scores():
    included = np.array(inclusion_draw(M, 3))
    res = audit(included.astype(float), included, delta=1e-5, confidence=0.9)
    assert isinstance(res, AuditResult)
    assert (res.n_examples, res.confidence, res.delta) == (M, 0.9, 1e-5)
    assert res.n_guesses == res.k_positive + res.k_negative
    # Perfect scores: every "in" guess is a member; "out" guesses err only when the
    # split is wider than the member count.
    n_in = int(included.sum())
    assert res.n_correct == res.n_guesses - max(0, res.k_positive - n_in) - max(0, res.k_negative - (M - n_in))
    # Bonferroni over the 4 grid points: the bound is that of one test at 1 - 0.1/4.
    assert res.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(res.n_guesses, res.n_correct, M, 1e-5, 1 - 0.1 / 4))
    assert res.epsilon_lower_bound < epsilon_lower_bound(res.n_guesses, res.n_correct, M, 1e-5, 0.9)


def test_attainable_bound_is_the_all_correct_ceiling():
    """Issue 14: the audit states the best bound its guesses could reach; with 16 canaries it is small,
    with 256 well above the ε values audited, and a found bound never exceeds it."""
    small, large = attainable_bound(16, 1e-5), attainable_bound(256, 1e-5)
    pairs = default_guess_grid(16)
    assert small == pytest.approx(max(epsilon_lower_bound(kp + kn, kp + kn, 16, 1e-5, 1 - 0.05 / len(pairs))
                                      for kp, kn in pairs))
    assert small < 2.0 < large          # 16 canaries cannot show ε ≥ 2; 256 can show up to about 4
    included = np.array(inclusion_draw(M, 5))
    for scores in (included.astype(float), np.random.default_rng(0).random(M)):
        res = audit(scores, included, delta=1e-5)
        assert res.epsilon_attainable == attainable_bound(M, 1e-5)
        assert res.epsilon_lower_bound <= res.epsilon_attainable


def test_default_guess_grid():
    assert default_guess_grid(1000) == [(50, 50), (125, 125), (250, 250), (500, 500)]
    assert default_guess_grid(7) == [(0, 1), (1, 1), (2, 2), (3, 4)]
    assert default_guess_grid(1) == [(0, 1)]


def test_inclusion_draw():
    a = inclusion_draw(2000, 11)
    assert a == inclusion_draw(2000, 11)
    assert a != inclusion_draw(2000, 12)
    assert all(type(x) is bool for x in a) and len(a) == 2000
    assert 900 < sum(a) < 1100
    assert a == list(np.random.Generator(np.random.PCG64(11)).random(2000) < 0.5)
    assert inclusion_draw(0, 1) == []


# ------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("call,message", [
    (lambda: epsilon_lower_bound(10, 11, 100), "n_correct .11. cannot exceed n_guesses .10."),
    (lambda: epsilon_lower_bound(200, 10, 100), "n_guesses .200. cannot exceed n_examples .100."),
    (lambda: epsilon_lower_bound(10, 5, 100, confidence=1.0), "confidence must be in"),
    (lambda: epsilon_lower_bound(10, 5, 100, confidence=0.0), "confidence must be in"),
    (lambda: epsilon_lower_bound(10, 5, 100, delta=1.0), "delta must be in"),
    (lambda: epsilon_lower_bound(10, 5, 100, delta=-1e-9), "delta must be in"),
    (lambda: epsilon_lower_bound(10, 5, 100, delta=float("nan")), "delta must be a finite number"),
    (lambda: epsilon_lower_bound(10, -1, 100), "n_correct must be >= 0"),
    (lambda: epsilon_lower_bound(10.5, 5, 100), "n_guesses must be an integer"),
    (lambda: epsilon_lower_bound(0, 0, 0), "n_examples must be >= 1"),
    (lambda: p_value(10, 5, 100, -0.1), "epsilon must be >= 0"),
    (lambda: audit([1.0, 2.0], [True], 0.0), "same length"),
    (lambda: audit([], [], 0.0), "empty"),
    (lambda: audit([1.0, float("nan")], [True, False], 0.0), "NaN"),
    (lambda: audit([1.0, 2.0], [2, 0], 0.0), "included must contain booleans"),
    (lambda: audit([1.0, 2.0], [True, False], 0.0, guesses=(2, 1)), "cannot exceed the number of examples"),
    (lambda: audit([1.0, 2.0], [True, False], 0.0, guesses=(0, 0)), "must be > 0"),
    (lambda: audit([1.0, 2.0], [True, False], 0.0, guesses=[]), "non-empty list of pairs"),
    (lambda: audit([1.0, 2.0], [True, False], 0.0, confidence=1.5), "confidence must be in"),
    (lambda: inclusion_draw(-1, 0), "n must be >= 0"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(AuditError, match=message) as info:
        call()
    assert isinstance(info.value, PrunePrivError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_nothing_to_conclude_is_zero():
    assert epsilon_lower_bound(0, 0, 10) == 0.0
    assert epsilon_lower_bound(10, 0, 10) == 0.0
    assert epsilon_lower_bound(10, 5, 10) == 0.0             # chance level
    assert epsilon_lower_bound(3, 3, 10) == 0.0              # 1/8 > 5%: too few guesses


def test_explicit_list_of_pairs_is_bonferroni_corrected():
    scores, included = randomized_response(2.0, 5)
    pairs = [(250, 250), (500, 500)]
    res = audit(scores, included, delta=1e-6, guesses=pairs)
    singles = [audit(scores, included, delta=1e-6, confidence=1 - 0.05 / 2, guesses=p) for p in pairs]
    best = max(singles, key=lambda r: r.epsilon_lower_bound)
    assert (res.k_positive, res.k_negative) == (best.k_positive, best.k_negative)
    assert res.epsilon_lower_bound == best.epsilon_lower_bound
    assert res.confidence == 0.95
    # A single pair gets no correction and so a (weakly) higher bound.
    assert audit(scores, included, 1e-6, guesses=pairs[0]).epsilon_lower_bound >= singles[0].epsilon_lower_bound
