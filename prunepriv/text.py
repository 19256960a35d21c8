"""Tokenization into padded batches (right padding, attention masks)."""
from __future__ import annotations

from typing import Iterator

import torch


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` into one right-padded batch truncated to ``max_length``."""
    batch = tokenizer(
        list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
    )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def batches(tokenizer, texts: list[str], max_length: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches of ``batch_size`` texts, in order."""
    for start in range(0, len(texts), batch_size):
        yield encode(tokenizer, texts[start:start + batch_size], max_length)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}
