"""Tokenization into padded batches (right padding, attention masks)."""
from __future__ import annotations

from typing import Iterator

import torch

from prunepriv.errors import ModelError

CHARS_PER_TOKEN = 8        # a first guess at how many characters cover a token; doubled until enough
TOKEN_MARGIN = 16          # tokens past the cut that must exist, so the cut cannot change the kept ones


def head(tokenizer, text: str, max_length: int) -> str:
    """The shortest prefix of ``text`` whose first ``max_length`` tokens are those of the whole text.

    Tokenizing a 50 MB record only to keep its first 128 tokens costs minutes;
    the prefix is grown (8 characters per token, doubled while needed) until it
    yields ``TOKEN_MARGIN`` tokens more than are kept, so the kept tokens lie
    well before the cut, which can only re-split the last word.
    """
    chars = CHARS_PER_TOKEN * (max_length + TOKEN_MARGIN)
    while chars < len(text):
        prefix = text[:chars]
        if len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) >= max_length + TOKEN_MARGIN:
            return prefix
        chars *= 2
    return text


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` into one right-padded batch truncated to ``max_length``."""
    batch = tokenizer(
        [head(tokenizer, t, max_length) for t in texts], return_tensors="pt", padding=True, truncation=True,
        max_length=max_length,
    )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def batches(tokenizer, texts: list[str], max_length: int, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches of ``batch_size`` texts, in order."""
    for start in range(0, len(texts), batch_size):
        yield encode(tokenizer, texts[start:start + batch_size], max_length)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def document_start_id(tokenizer) -> int:
    """The token that opens every record in training, scoring and generation (BOS, else EOS)."""

    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ModelError("the tokenizer has neither a BOS nor an EOS token to open a record with")


def record_ids(tokenizer, texts: list[str], max_length: int, end: bool = True) -> list[list[int]]:
    """Token ids of whole records as the fine-tuned model sees them.

    Each record is ``[start] + tokens (+ [eos])``, truncated to ``max_length``:
    the start token lets the model learn a record's first token (and lets
    unconditional sampling begin), the end token lets generation stop.
    """
    start = document_start_id(tokenizer)
    eos = tokenizer.eos_token_id
    encoded = tokenizer([head(tokenizer, t, max_length) for t in texts], add_special_tokens=False)["input_ids"]
    tail = [int(eos)] if end and eos is not None else []
    return [([start] + list(ids) + tail)[:max_length] for ids in encoded]


def pad_right(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad id lists into ``input_ids`` and ``attention_mask``."""
    length = max((len(s) for s in sequences), default=1)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask}
