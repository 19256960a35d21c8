"""Federated pruning (FedPrLLM, Guo et al. 2025), simulated on one machine.

``K`` clients each hold a shard of the private corpus (whole patients, so a
patient's notes never straddle clients). A client computes local statistics
on its shard and shares only those:

* layer similarity (:func:`prunepriv.compress.similarity.layer_similarity`); the
  server averages them, weighted by token counts — the token-weighted mean of
  the clients' means is the pooled mean, so federated similarity equals the
  centralized one up to float rounding;
* a Wanda mask (sequential Wanda, :mod:`prunepriv.compress.wanda`, as the
  FedPrLLM clients run it); the server aggregates by counting the clients that
  prune each weight. :func:`layer_count_masks` is FedPrLLM's recommended
  aggregation (Guo et al. 2025; official code ``Pengxin-Guo/FedPrLLM``
  ``lib/prune.py:prune_fedprllm_layer`` with ``--comparison_group layer`` and
  no ``--weight_scaling``): in each weight matrix the ``floor(sparsity · n)``
  weights pruned by most clients are pruned, ties at the threshold chosen at
  random, and the kept weights are not rescaled. :func:`row_count_masks` is the
  variant this package used first (comparison within each output row, ties
  broken by ``|W|``), kept as an extra row.

Compared with a centralized choice (all shards pooled) and each client's
local-only choice.
"""
from __future__ import annotations

import math
import random
from itertools import combinations
from typing import Sequence

import numpy as np
import torch

from prunepriv.compress.similarity import LayerSimilarity
from prunepriv.compress.sparsity import (
    Masks,
    check_sparsity,
    keep_top,
    prunable_linears,
)
from prunepriv.errors import DataError


def client_shards(records: Sequence, n_clients: int, per_client: int, seed: int) -> list[list[str]]:
    """Texts of ``n_clients`` disjoint shards of ``per_client`` records, dealt by patient.

    Patients are shuffled with ``seed`` and dealt round-robin; a client takes
    its patients' records until it holds ``per_client``.
    """
    if n_clients < 1:
        raise DataError(f"need at least one client, got {n_clients}")
    patients: dict[str, list] = {}
    for record in records:
        patients.setdefault(record.patient or record.id, []).append(record)
    order = sorted(patients)
    random.Random(seed).shuffle(order)
    shards: list[list[str]] = [[] for _ in range(n_clients)]
    for i, patient in enumerate(order):
        shard = shards[i % n_clients]
        shard.extend(r.text for r in patients[patient][: per_client - len(shard)])
    short = [i + 1 for i, s in enumerate(shards) if not s]
    if short:
        raise DataError(f"{len(patients)} patients cannot fill {n_clients} clients (clients {short} are empty)")
    return shards


def average_similarity(local: Sequence[LayerSimilarity]) -> LayerSimilarity:
    """Server-side aggregation: token-weighted mean of the cosine readings, sequence-weighted block readings."""
    tokens = np.array([s.n_tokens for s in local], dtype=float)
    seqs = np.array([s.n_sequences for s in local], dtype=float)
    matrix = sum(w * s.matrix for w, s in zip(tokens, local)) / tokens.sum()
    block = sum(w * s.block for w, s in zip(seqs, local)) / seqs.sum()
    adjacent = np.array([matrix[i, i + 1] for i in range(matrix.shape[0] - 1)])
    return LayerSimilarity(matrix, adjacent, block, int(tokens.sum()), int(seqs.sum()))


def layer_count_masks(model, local: Sequence[Masks], sparsity: float, generator: torch.Generator) -> Masks:
    """FedPrLLM's recommended aggregation: in each weight matrix prune the ``floor(sparsity · n)`` weights
    that most clients prune, ties at the threshold at random (``generator``); no weight scaling."""
    sparsity = check_sparsity(sparsity)
    if not local:
        raise DataError("no client masks to aggregate")
    out = {}
    for name, module in prunable_linears(model).items():
        kept = sum(m[name].to(torch.float32) for m in local)        # clients keeping each weight
        jitter = 0.5 * torch.rand(kept.shape, generator=generator)  # orders equal counts only, uniformly
        out[name] = keep_top(kept + jitter, kept.numel() - int(math.floor(sparsity * kept.numel())), None)
    return out


def row_count_masks(model, local: Sequence[Masks], sparsity: float) -> Masks:
    """The row-wise variant: per output row keep the weights most clients keep (ties: larger |W|)."""
    sparsity = check_sparsity(sparsity)
    if not local:
        raise DataError("no client masks to aggregate")
    out = {}
    for name, module in prunable_linears(model).items():
        counts = sum(m[name].to(torch.float32) for m in local)
        w = module.weight.detach().abs().float().cpu()
        score = counts + 0.5 * w / w.max().clamp(min=1e-12)        # |W| only orders equal counts
        out[name] = keep_top(score, w.shape[1] - int(math.floor(sparsity * w.shape[1])), 1)
    return out


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|a ∩ b| / |a ∪ b| of two layer sets (1 for two empty sets)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def mean_pairwise(items: Sequence, agreement) -> float:
    """Mean ``agreement`` over all unordered pairs of ``items`` (NaN for fewer than two)."""
    pairs = list(combinations(items, 2))
    return float(np.mean([agreement(a, b) for a, b in pairs])) if pairs else float("nan")
