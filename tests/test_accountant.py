"""The cached RDP accounting gives Opacus's ε and σ bit for bit (prunepriv.privacy.accountant)."""
from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from prunepriv.privacy.accountant import rdp_epsilon, sigma_for_epsilon
from prunepriv.privacy.selection import composed_epsilon
from prunepriv.privacy.specs import epsilon_for

HISTORIES = [
    [(0.9423828125, 0.2, 4)],
    [(1.7, 0.01, 1000)],
    [(0.6, 0.5, 3), (1.2, 0.25, 7)],             # two mechanisms, as after a change of σ or q
    [(3.5, 1.0, 1), (0.8, 0.05, 120)],           # private layer selection, then DP-SGD
]


@pytest.mark.filterwarnings("ignore:Optimal order")
@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", [1e-3, 1e-5])
def test_cached_epsilon_is_opacus_epsilon_bit_for_bit(history, delta):
    acc = RDPAccountant()
    acc.history = list(history)
    expected = acc.get_epsilon(delta)
    assert rdp_epsilon(history, delta) == expected
    assert rdp_epsilon(history, delta) == expected                   # from the cache, the same
    assert composed_epsilon(history, delta) == expected
    if len(history) == 1:
        assert epsilon_for(*history[0], delta) == expected
    assert rdp_epsilon([], delta) == 0.0


@pytest.mark.filterwarnings("ignore:Optimal order")
def test_cached_sigma_is_opacus_sigma():
    expected = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-3, sample_rate=0.2, steps=4, accountant="rdp")
    assert sigma_for_epsilon(3.0, 1e-3, 0.2, 4, "rdp") == expected
    assert sigma_for_epsilon(3.0, 1e-3, 0.2, 4, "rdp") == expected
    assert sigma_for_epsilon(3.0, 1e-3, 0.2, 5, "rdp") != expected
