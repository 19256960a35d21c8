"""Layer-representation similarity (notebook 01).

Representations are captured with hooks on the decoder layers: ``h[0]`` is
the input of layer 0 and ``h[i + 1]`` the output of layer ``i`` — not
``output_hidden_states``, whose last entry is taken after the final norm.
With ``L`` layers there are ``L + 1`` representations.

Three readings of "pairwise cosine similarity" are computed in one pass:

* ``matrix[i, j]``: mean over tokens of cos(h[i], h[j]) — the heatmap;
* ``adjacent[i] = matrix[i, i + 1]``: how little layer ``i`` changes its
  input; ShortGPT's Block Influence (Men et al. 2024) is ``1 - adjacent[i]``;
* ``block[n - 1, l]``: last-token angular distance arccos(cos(h[l], h[l+n]))/π
  averaged over sequences (Gromov et al. 2024), for removing layers
  ``l .. l+n-1``; NaN where ``l + n > L``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from prunepriv.lm.models import backbone, decoder_layers
from prunepriv.lm.text import to_device


@dataclass
class LayerSimilarity:
    """Similarity statistics of one model on one set of texts."""

    matrix: np.ndarray      # (L+1, L+1) mean token cosine similarity
    adjacent: np.ndarray    # (L,) cos(h[i], h[i+1])
    block: np.ndarray       # (L, L+1) angular distance, row n-1 = block size n
    n_tokens: int
    n_sequences: int
    sequence_adjacent: np.ndarray | None = None   # (N, L) each sequence's summed token cosine of h[i], h[i+1]
    sequence_tokens: np.ndarray | None = None     # (N,) its token count: the adjacent similarity is their ratio

    @property
    def num_layers(self) -> int:
        return len(self.adjacent)

    @property
    def block_influence(self) -> np.ndarray:
        """ShortGPT's Block Influence, 1 - adjacent similarity."""
        return 1.0 - self.adjacent

    def to_dict(self) -> dict:
        return {
            "matrix": self.matrix.tolist(), "adjacent": self.adjacent.tolist(),
            "block": [[None if np.isnan(v) else float(v) for v in row] for row in self.block],
            "n_tokens": self.n_tokens, "n_sequences": self.n_sequences,
            **({} if self.sequence_adjacent is None else {"sequence_adjacent": self.sequence_adjacent.tolist(),
                                                          "sequence_tokens": self.sequence_tokens.tolist()}),
        }

    @classmethod
    def from_dict(cls, obj: dict) -> "LayerSimilarity":
        block = np.array([[np.nan if v is None else v for v in row] for row in obj["block"]], dtype=float)
        per_sequence = ("sequence_adjacent" in obj) or None
        return cls(np.array(obj["matrix"]), np.array(obj["adjacent"]), block,
                   int(obj["n_tokens"]), int(obj["n_sequences"]),
                   per_sequence and np.array(obj["sequence_adjacent"], dtype=float),
                   per_sequence and np.array(obj["sequence_tokens"], dtype=float))

    def resampled_adjacent(self, draws: int, seed: int) -> np.ndarray:
        """(draws, L) adjacent similarities of bootstrap resamples of the calibration sequences."""
        if self.sequence_adjacent is None:
            raise ValueError("these statistics were measured without per-sequence sums")
        n = len(self.sequence_tokens)
        picks = np.random.default_rng(seed).integers(0, n, size=(draws, n))
        return self.sequence_adjacent[picks].sum(1) / self.sequence_tokens[picks].sum(1)[:, None]


class LayerCapture:
    """Hooks that record each decoder layer's input (layer 0) and outputs."""

    def __init__(self, model) -> None:
        self.layers = decoder_layers(model)
        self.states: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self) -> "LayerCapture":
        def first_input(module, args, kwargs):
            self.states.clear()
            self.states.append(args[0] if args else kwargs["hidden_states"])

        def output(module, args, kwargs, out):
            self.states.append(out[0] if isinstance(out, tuple) else out)

        self.handles.append(self.layers[0].register_forward_pre_hook(first_input, with_kwargs=True))
        for layer in self.layers:
            self.handles.append(layer.register_forward_hook(output, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def stacked(self) -> torch.Tensor:
        """(L+1, B, T, H) representations of the last forward pass."""
        return torch.stack([s.float() for s in self.states])


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)


@torch.inference_mode()
def layer_similarity(model, batches: Iterable[dict[str, torch.Tensor]]) -> LayerSimilarity:
    """Accumulate the three similarity readings over ``batches`` (pad-aware)."""
    device = next(model.parameters()).device
    num_layers = len(decoder_layers(model))
    gram = torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64)
    angles = torch.zeros(num_layers, num_layers + 1, dtype=torch.float64)
    n_tokens = n_sequences = 0
    per_sequence, per_tokens = [], []
    body = backbone(model)
    with LayerCapture(model) as capture:
        for batch in batches:
            batch = to_device(batch, device)
            body(**batch, use_cache=False)
            states = torch.nn.functional.normalize(capture.stacked(), dim=-1)   # (S, B, T, H)
            mask = batch["attention_mask"].to(states.dtype)
            masked = states * mask[None, :, :, None]
            gram += torch.einsum("ibth,jbth->ij", masked, states).double().cpu()
            per_sequence.append(torch.einsum("ibth,ibth->bi", masked[:-1], states[1:]).double().cpu())
            per_tokens.append(mask.sum(1).double().cpu())
            n_tokens += int(mask.sum())
            last = states[:, torch.arange(states.shape[1], device=device), last_token_index(batch["attention_mask"])]
            cos_last = torch.einsum("ibh,jbh->ijb", last, last).clamp(-1.0, 1.0)        # (S, S, B)
            for n in range(1, num_layers + 1):
                idx = torch.arange(0, num_layers + 1 - n, device=device)
                ang = torch.arccos(cos_last[idx, idx + n]) / torch.pi               # (S-n, B)
                angles[n - 1, : len(idx)] += ang.sum(1).double().cpu()
            n_sequences += states.shape[1]
    if n_tokens == 0:
        raise ValueError("no tokens to measure similarity on")
    matrix = (gram / n_tokens).numpy()
    block = (angles / n_sequences).numpy()
    for n in range(1, num_layers + 1):
        block[n - 1, num_layers + 1 - n:] = np.nan
    adjacent = np.array([matrix[i, i + 1] for i in range(num_layers)])
    return LayerSimilarity(matrix, adjacent, block, n_tokens, n_sequences,
                           torch.cat(per_sequence).numpy(), torch.cat(per_tokens).numpy())
