"""Training records as tensors and the logical batches DP-SGD draws from them.

* :class:`TokenizedTexts` — each record as ``[start] + tokens + [eos]``.
* :class:`LengthSortedBatches` — the Poisson logical batches, each ordered by
  record length so that physical batches pad short records with short ones.
* :class:`RankShare` — one process's share of every logical batch under
  ``torch.distributed``.
* :func:`make_collate` — right-padding into ``input_ids`` / ``attention_mask``.
"""
from __future__ import annotations

from typing import Callable

import torch

from prunepriv.lm.text import record_ids


class TokenizedTexts(torch.utils.data.Dataset):
    """Records as ``[start] + tokens + [eos]`` (:func:`prunepriv.lm.text.record_ids`), truncated to ``max_length``."""

    def __init__(self, tokenizer, texts: list[str], max_length: int) -> None:

        self.items = [torch.tensor(ids, dtype=torch.long) for ids in record_ids(tokenizer, texts, max_length)]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


class RankShare:
    """This rank's share of each logical batch: every ``world``-th record from ``rank`` on.

    Every rank iterates the same length-sorted global Poisson batches (its
    sampler generator is seeded like every other rank's), so the shares of
    the ranks partition exactly the logical batch a one-process run draws.
    An empty share is still yielded: each rank takes one optimizer step —
    one all-reduce — per logical batch, so no rank waits for another.
    (Opacus's ``DistributedUniformWithReplacementSampler`` skips a rank's
    empty batches, which would leave the ranks with different step counts.)
    """

    def __init__(self, batches, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for indices in self.batches:
            yield indices[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)


class LengthSortedBatches:
    """Logical batches of ``sampler`` with their indices ordered by record length.

    Which records form a logical batch (the Poisson draw the accountant
    assumes) is unchanged; only their order inside the batch is, so that the
    physical batches split from it in order pad short records (canaries)
    with short ones instead of with whole notes.
    """

    def __init__(self, sampler, lengths: list[int]) -> None:
        self.sampler, self.lengths = sampler, lengths

    def __iter__(self):
        for indices in self.sampler:
            yield sorted(indices, key=lambda i: (self.lengths[i], i))

    def __len__(self) -> int:
        return len(self.sampler)


def make_collate(pad_id: int) -> Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]:
    """Right-pad a list of sequences; an empty Poisson batch gives 0-row tensors."""
    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not items:
            empty = torch.zeros(0, 1, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty}
        length = max(len(x) for x in items)
        ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, x in enumerate(items):
            ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask}
    return collate
