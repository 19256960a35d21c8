"""Latency of prefill and cached decode versus layers removed.

Prefill: one forward pass over a ``prompt_length``-token prompt with the KV
cache on and logits for the last position only (as ``generate`` does).
Decode: ``new_tokens`` greedy steps of one token each, reusing the cache.
After ``warmup`` untimed runs, the pruned and the unpruned model are timed
alternately (interleaved, so that drift in machine speed hits both) and
the median of ``repeats`` is reported.
"""
from __future__ import annotations

import copy
import inspect
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prunepriv.compress.pruning import remove_layers
from prunepriv.lm.models import decoder_layers


@dataclass
class Latency:
    """Median seconds for one prefill and one full decode."""

    prefill_s: float
    decode_s: float
    prompt_length: int
    new_tokens: int

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_length / self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.new_tokens / self.decode_s


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_once(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for one prefill and for ``new_tokens`` cached greedy decode steps."""
    device = prompt.device
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    synchronize(device)
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True, **extra)
    synchronize(device)
    prefill = time.perf_counter() - start
    past = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    synchronize(device)
    return prefill, time.perf_counter() - start


def time_models(models: dict[str, nn.Module], prompt_length: int = 128, new_tokens: int = 32,
                repeats: int = 5, warmup: int = 2, seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """``(prefill, decode)`` seconds of every repeat of each model, timed interleaved on the same random prompt."""
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, first.config.vocab_size, (1, prompt_length), generator=generator).to(device)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(warmup):
        for model in models.values():
            time_once(model, prompt, new_tokens)
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(time_once(model, prompt, new_tokens))
    return times


def compare_latency(models: dict[str, nn.Module], prompt_length: int = 128, new_tokens: int = 32,
                    repeats: int = 5, warmup: int = 2, seed: int = 0) -> dict[str, Latency]:
    """Interleaved timing of several models on the same random prompt: the median of each."""
    times = time_models(models, prompt_length, new_tokens, repeats, warmup, seed)
    return {
        name: Latency(statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs),
                      prompt_length, new_tokens)
        for name, runs in times.items()
    }


def paired_ratio_range(pruned: list[tuple[float, float]], unpruned: list[tuple[float, float]],
                       part: int) -> list[float]:
    """``[min, max]`` over the repeats of pruned / unpruned time of ``part`` (0 prefill, 1 decode), each
    repeat's pair timed back to back: the spread of the ratio the median reports."""
    ratios = [p[part] / u[part] for p, u in zip(pruned, unpruned)]
    return [min(ratios), max(ratios)]


def latency_ratio(model: nn.Module, layers: list[int], **kwargs) -> dict:
    """Pruned-versus-unpruned latency ratios measured in this process.

    Returns the layer count, layers removed, measured prefill and decode time
    ratios (pruned / unpruned), the ideal ratio (L - K) / L, and raw medians.
    """
    num_layers = len(decoder_layers(model))
    pruned = remove_layers(copy.deepcopy(model), layers)
    times = time_models({"unpruned": model, "pruned": pruned}, **kwargs)
    prompt_length, new_tokens = kwargs.get("prompt_length", 128), kwargs.get("new_tokens", 32)
    base, small = (Latency(statistics.median(t[0] for t in times[name]), statistics.median(t[1] for t in times[name]),
                           prompt_length, new_tokens) for name in ("unpruned", "pruned"))
    return {
        "layers": num_layers,
        "removed": len(layers),
        "removed_layers": list(layers),
        "prefill_ratio": small.prefill_s / base.prefill_s,
        "decode_ratio": small.decode_s / base.decode_s,
        "prefill_ratio_range": paired_ratio_range(times["pruned"], times["unpruned"], 0),
        "decode_ratio_range": paired_ratio_range(times["pruned"], times["unpruned"], 1),
        "repeats": len(times["pruned"]),
        "ideal_ratio": (num_layers - len(layers)) / num_layers,
        "unpruned": {**asdict(base), "prefill_tokens_per_s": base.prefill_tokens_per_s,
                     "decode_tokens_per_s": base.decode_tokens_per_s},
        "pruned": {**asdict(small), "prefill_tokens_per_s": small.prefill_tokens_per_s,
                   "decode_tokens_per_s": small.decode_tokens_per_s},
        "threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
    }
