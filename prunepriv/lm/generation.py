"""Text generation with a fine-tuned model: seeded sampling of synthetic
records and greedy continuation of record prefixes (notebook 04).

Anchors: Carlini et al. 2021, "Extracting Training Data from Large Language
Models" (unconditional sampling, then ranking); the prefix attack of Carlini
et al. 2023, "Quantifying Memorization Across Neural Language Models".
Both use the KV cache (``use_cache=True``) of ``model.generate``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunepriv.config import MemorizationConfig
from prunepriv.errors import ConfigError
from prunepriv.lm.text import document_start_id
from prunepriv.progress import tqdm


@dataclass
class SamplingSpec:
    """How synthetic records are sampled (defaults: the profile's ``memorization`` section)."""

    n_samples: int
    max_new_tokens: int
    temperature: float
    top_k: int                # 0: no top-k filter
    top_p: float              # 1.0: no nucleus filter
    batch_size: int

    @classmethod
    def from_config(cls, cfg: MemorizationConfig, **settings) -> SamplingSpec:
        """The sampling settings of a profile's ``memorization`` section, fields overridable by keyword."""
        values = dict(n_samples=cfg.n_samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                      top_k=cfg.top_k, top_p=cfg.top_p, batch_size=cfg.batch_size)
        return cls(**{**values, **settings})

    def validate(self) -> None:
        if self.n_samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("sampling needs n_samples, max_new_tokens and batch_size >= 1")
        if not self.temperature > 0:
            raise ConfigError(f"sampling temperature must be > 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling needs top_k >= 0 and top_p in (0, 1], got {self.top_k}, {self.top_p}")


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def sample_records(model, tokenizer, spec: SamplingSpec, seed: int, progress: bool = True) -> list[str]:
    """``spec.n_samples`` records sampled from the record-start token, seeded per batch."""
    spec.validate()
    start = document_start_id(tokenizer)
    device = _device(model)
    texts: list[str] = []
    n_batches = math.ceil(spec.n_samples / spec.batch_size)
    for b in tqdm(range(n_batches), desc="sampling", leave=False, disable=not progress):
        size = min(spec.batch_size, spec.n_samples - b * spec.batch_size)
        torch.manual_seed(seed * 100_003 + b)            # a batch's samples do not depend on earlier batches
        ids = torch.full((size, 1), start, dtype=torch.long, device=device)
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
            temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p,   # top_k 0: off
            max_new_tokens=spec.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, use_cache=True,
        )
        texts += tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)
    return [t.strip() for t in texts]


@torch.inference_mode()
def continue_greedy(model, prompts: list[list[int]], new_tokens: int, pad_id: int,
                    batch_size: int = 16) -> list[list[int]]:
    """Greedy continuation of equal-length prompts; exactly ``new_tokens`` ids each (EOS not special)."""
    if not prompts:
        return []
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("continue_greedy needs prompts of one length (no padding)")
    device = _device(model)
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        ids = torch.tensor(prompts[i:i + batch_size], dtype=torch.long, device=device)
        gen = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id,
            eos_token_id=None, use_cache=True,
        )
        out += gen[:, ids.shape[1]:].tolist()
    return out
