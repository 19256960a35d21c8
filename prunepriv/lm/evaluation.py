"""Perplexity on held-out text (token-weighted, padding masked), and the per-record training loss."""
from __future__ import annotations

import math

import torch
from torch import nn

from prunepriv.lm.text import batches, to_device


@torch.inference_mode()
def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and token count per sequence (padding excluded)."""
    device = next(model.parameters()).device
    batch = to_device(batch, device)
    logits = model(**batch, use_cache=False).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(1).cpu(), mask.sum(1).cpu()


def perplexity(model, tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 8) -> float:
    """exp(mean NLL over all predicted tokens of ``texts``)."""
    total, count = 0.0, 0.0
    for batch in batches(tokenizer, texts, max_length, batch_size):
        nll, n = token_nll(model, batch)
        total += float(nll.sum())
        count += float(n.sum())
    if count == 0:
        raise ValueError("no tokens to score")
    return math.exp(total / count)


def sequence_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-record mean next-token NLL, shape (B,): the fine-tuning loss (gradients flow)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].to(logits.dtype)
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1.0)
