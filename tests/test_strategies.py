"""Choosing layers: each strategy, and SLEB's greedy search on a model with a known idle layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model

from prunepriv import choose_layers, greedy_loss_order
from prunepriv.compress.similarity import LayerSimilarity
from prunepriv.errors import PruningError
from prunepriv.lm.models import decoder_layers


def _sim(adjacent, block_rows) -> LayerSimilarity:
    adjacent = np.asarray(adjacent, dtype=float)
    L = len(adjacent)
    block = np.full((L, L + 1), np.nan)
    for n, row in enumerate(block_rows, start=1):
        block[n - 1, : len(row)] = row
    return LayerSimilarity(np.eye(L + 1), adjacent, block, 1, 1)


SIM = _sim([0.2, 0.9, 0.5, 0.95, 0.7, 0.1],
           [[0.5, 0.1, 0.4, 0.05, 0.3, 0.6], [0.5, 0.3, 0.08, 0.4, 0.2], [0.3, 0.25, 0.2, 0.1]])


def test_cosine_removes_the_most_similar_layers():
    assert choose_layers("cosine", 2, 6, SIM) == [1, 3]
    assert choose_layers("cosine", 3, 6, SIM) == [1, 3, 4]


def test_block_removes_the_closest_contiguous_run():
    assert choose_layers("block", 1, 6, SIM) == [3]
    assert choose_layers("block", 2, 6, SIM) == [2, 3]
    assert choose_layers("block", 3, 6, SIM) == [3, 4, 5]


def test_last_and_random():
    assert choose_layers("last", 2, 6) == [4, 5]
    assert choose_layers("random", 3, 6, seed=1) == choose_layers("random", 3, 6, seed=1)
    draws = {tuple(choose_layers("random", 3, 30, seed=s)) for s in range(5)}
    assert len(draws) > 1


def test_zero_removes_nothing_and_bad_requests_fail():
    assert choose_layers("cosine", 0, 6, SIM) == []
    with pytest.raises(PruningError, match="unknown pruning strategy 'shortest'"):
        choose_layers("shortest", 1, 6, SIM)
    with pytest.raises(PruningError, match="cannot remove 6 layers"):
        choose_layers("last", 6, 6)
    with pytest.raises(PruningError, match="needs layer-similarity"):
        choose_layers("cosine", 1, 6, None)


def test_greedy_loss_follows_the_loss_of_each_removal():
    """Round one picks the layer whose structural removal gives the lowest calibration loss."""
    import copy

    from prunepriv import remove_layers
    from prunepriv.compress.pruning import calibration_loss

    model = tiny_model("llama", layers=5, seed=3)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(2, 250, (2, 12), generator=g),
                "attention_mask": torch.ones(2, 12, dtype=torch.long)}]
    order, losses = greedy_loss_order(model, batches, 3, progress=False)
    single = [calibration_loss(remove_layers(copy.deepcopy(model), [i]), batches) for i in range(5)]
    assert order[0] == int(np.argmin(single))
    assert losses[0] == pytest.approx(min(single), rel=1e-5)
    second = [calibration_loss(remove_layers(copy.deepcopy(model), [order[0], i]), batches)
              for i in range(5) if i != order[0]]
    assert losses[1] == pytest.approx(min(second), rel=1e-5)
    assert len(set(order)) == 3
    assert len(decoder_layers(model)) == 5          # the search leaves the model intact
    assert choose_layers("greedy-loss", 2, 5, greedy_order=order) == sorted(order[:2])
