"""Layer similarity: shapes, values on known layers, padding awareness."""
from __future__ import annotations

import numpy as np
import torch
from conftest import tiny_model
from torch import nn

from prunepriv.compress.similarity import (
    LayerSimilarity,
    last_token_index,
    layer_similarity,
)
from prunepriv.lm.models import set_decoder_layers


class Scale(nn.Module):
    """A stand-in decoder layer: multiplies its input by a constant."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states * self.factor


def _batch(lengths: list[int], total: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 250, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_shapes_and_diagonal():
    sim = layer_similarity(tiny_model("llama", layers=5), [_batch([10, 7])])
    assert sim.matrix.shape == (6, 6)
    assert sim.adjacent.shape == (5,)
    assert sim.block.shape == (5, 6)
    assert np.allclose(np.diag(sim.matrix), 1.0, atol=1e-5)
    assert np.allclose(sim.matrix, sim.matrix.T, atol=1e-6)
    assert sim.n_tokens == 17 and sim.n_sequences == 2
    # block entries exist exactly for l + n <= L
    for n in range(1, 6):
        assert not np.isnan(sim.block[n - 1, : 6 - n]).any()
        assert np.isnan(sim.block[n - 1, 6 - n:]).all()
    assert np.allclose(sim.block_influence, 1 - sim.adjacent)


def test_known_layers_give_known_values():
    """Scaling keeps direction (cos 1, angle 0); negation flips it (cos -1, angle 1)."""
    model = tiny_model("llama", layers=4)
    set_decoder_layers(model, nn.ModuleList([Scale(2.0), Scale(-1.0), Scale(0.5), Scale(-3.0)]))
    sim = layer_similarity(model, [_batch([10, 6])])
    signs = np.array([1, 1, -1, -1, 1])                  # direction of h[0..4] relative to h[0]
    assert np.allclose(sim.matrix, np.outer(signs, signs), atol=1e-5)
    assert np.allclose(sim.adjacent, [1, -1, 1, -1], atol=1e-5)
    assert np.allclose(sim.block[0, :4], [0, 1, 0, 1], atol=1e-3)
    assert np.allclose(sim.block[1, :3], [1, 1, 1], atol=1e-3)   # two layers: one flip
    assert np.allclose(sim.block[3, :1], [0], atol=1e-3)         # four layers: two flips


def test_padding_is_ignored():
    """A padded batch gives the token-weighted mean of its sequences measured alone."""
    model = tiny_model("llama", layers=4)
    both = _batch([10, 4])
    alone = [{k: v[i:i + 1, : n] for k, v in both.items()} for i, n in enumerate([10, 4])]
    joint = layer_similarity(model, [both])
    parts = [layer_similarity(model, [b]) for b in alone]
    weighted = (parts[0].matrix * 10 + parts[1].matrix * 4) / 14
    assert np.allclose(joint.matrix, weighted, atol=1e-4)
    assert np.allclose(joint.block[0, :4], (parts[0].block[0, :4] + parts[1].block[0, :4]) / 2, atol=1e-4)


def test_last_token_index_handles_both_paddings():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_token_index(right).tolist() == [2, 1]
    assert last_token_index(left).tolist() == [3, 3]


def test_round_trip_through_json():
    sim = layer_similarity(tiny_model("gpt2", layers=3), [_batch([10, 8])])
    back = LayerSimilarity.from_dict(sim.to_dict())
    assert np.allclose(back.matrix, sim.matrix) and np.allclose(back.adjacent, sim.adjacent)
    assert np.allclose(back.block, sim.block, equal_nan=True)
    assert np.allclose(back.sequence_adjacent, sim.sequence_adjacent)
    older = {k: v for k, v in sim.to_dict().items() if not k.startswith("sequence_")}   # saved before the sums
    assert LayerSimilarity.from_dict(older).sequence_adjacent is None


def test_per_sequence_sums_give_the_adjacent_similarity():
    sim = layer_similarity(tiny_model("llama", layers=5), [_batch([10, 7]), _batch([4, 9, 10], seed=1)])
    assert sim.sequence_adjacent.shape == (5, 5) and sim.sequence_tokens.tolist() == [10, 7, 4, 9, 10]
    np.testing.assert_allclose(sim.sequence_adjacent.sum(0) / sim.sequence_tokens.sum(), sim.adjacent, rtol=1e-5)


def test_choice_stability_sees_a_near_tie():
    """Issue 14: a clear winner is chosen in every bootstrap draw; two layers that trade places from one
    sequence to the next are each chosen in some draws only."""
    from prunepriv.stages.experiments import choice_stability

    rng = np.random.default_rng(0)
    tokens = np.full(40, 20.0)
    clear = np.tile([0.5, 0.9, 0.5, 0.5], (40, 1)) * 20
    tied = clear.copy()
    tied[:, 3] = 20 * np.where(rng.random(40) < 0.5, 0.95, 0.85)             # layer 3 against layer 1 (0.9)
    for sums, same in ((clear, 1.0), (tied, None)):
        adjacent = sums.sum(0) / tokens.sum()
        sim = LayerSimilarity(np.eye(5), adjacent, np.zeros((4, 5)), 800, 40, sums, tokens)
        result = choice_stability(sim, "cosine", 1, draws=200, seed=0)
        if same is not None:
            assert result["same_set"] == same and result["layer_frequency"][1] == 1.0
        else:
            assert 0.05 < result["same_set"] < 0.95
            assert 0 < result["layer_frequency"][1] < 1 and 0 < result["layer_frequency"][3] < 1
            assert result["margin"] < 0.02
    assert choice_stability(sim, "last", 1)["same_set"] is None
