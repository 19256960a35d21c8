"""Records per second of evaluation, a plain LoRA step and a DP-SGD LoRA step, in fp32 and in bf16.

All six measurements run in one process on one batch, taking turns in each
timed round (so a load change on the machine hits all of them alike); the
report gives the median and the spread of the rounds, the bf16/fp32 speed-up
of each, the DP-SGD/plain time ratio in each precision, DP-SGD against the
physical limit (the frozen model's forward + backward of the same batch), and
each one's peak memory measured in a separate pass.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
from torch import nn

from prunepriv.compress.latency import synchronize
from prunepriv.lm.evaluation import next_token_nll, sequence_nll
from prunepriv.lm.models import cast_weights, decoder_layers
from prunepriv.lm.precision import DTYPES
from prunepriv.privacy.overhead import (
    encode_batch,
    interleaved_times,
    lora_step,
    peak_memories,
)

WORK = ("eval_forward", "forward_backward", "non_private_step", "dp_sgd_step")


def eval_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    """A timed evaluation forward pass: per-record loss, no gradients."""
    device = next(model.parameters()).device

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            sequence_nll(model, batch)
        synchronize(device)
        return time.perf_counter() - start
    return step


def forward_backward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    """The physical limit of a training step: the frozen model's forward and its backward down to the
    input embeddings (every activation gradient a LoRA step needs, no adapter, no optimizer)."""
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        inputs = embed(batch["input_ids"]).detach().requires_grad_()
        out = model(inputs_embeds=inputs, attention_mask=batch["attention_mask"], use_cache=False)
        nll, count = next_token_nll(out.logits, batch["input_ids"], batch["attention_mask"])
        (nll / count.clamp(min=1.0)).mean().backward()
        synchronize(device)
        return time.perf_counter() - start
    return step


def throughput(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 128,
               repeats: int = 5, warmup: int = 1, seed: int = 0,
               precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Records per second of :data:`WORK` in each of ``precisions`` (``model`` is read in fp32)."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    batch = encode_batch(tokenizer, texts, batch_size, max_length, device)
    steps: dict[str, Callable[[], float]] = {}
    for precision in precisions:
        copy_ = cast_weights(copy.deepcopy(model), DTYPES[precision]).eval()
        for p in copy_.parameters():
            p.requires_grad_(False)
        steps[f"eval_forward/{precision}"] = eval_forward(copy_, batch)
        steps[f"forward_backward/{precision}"] = forward_backward(copy_, batch)
        steps[f"non_private_step/{precision}"] = lora_step(copy_, batch, False, batch_size, seed)
        steps[f"dp_sgd_step/{precision}"] = lora_step(copy_, batch, True, batch_size, seed)
    memory = peak_memories(steps, device)
    times = interleaved_times(steps, warmup, repeats)
    n = int(batch["input_ids"].shape[0])
    return {
        "batch_size": n, "tokens": int(batch["attention_mask"].sum()), "max_length": max_length,
        "layers": len(decoder_layers(model)), "device": str(device), "threads": torch.get_num_threads(),
        "repeats": repeats,
        "records_per_s": {k: n / statistics.median(t) for k, t in times.items()},
        "seconds": {k: {"median": statistics.median(t), "min": min(t), "max": max(t)} for k, t in times.items()},
        "ratios": ratios(times, precisions),
        "peak_memory_mb": memory,
        "peak_memory_note": ("CUDA max_memory_allocated" if device.type == "cuda"
                             else "process peak RSS (VmHWM) after one step; includes every model copy"),
    }


def ratios(times: dict[str, list[float]], precisions: tuple[str, ...]) -> dict[str, float]:
    """Speed-ups of bf16 over fp32 (records per second) and the time of DP-SGD over a plain step."""
    med = {k: statistics.median(t) for k, t in times.items()}
    out = {}
    if {"fp32", "bf16"} <= set(precisions):
        for work in WORK:
            out[f"{work}_bf16_speedup"] = med[f"{work}/fp32"] / med[f"{work}/bf16"]
    for precision in precisions:
        out[f"dp_over_non_private/{precision}"] = med[f"dp_sgd_step/{precision}"] / med[f"non_private_step/{precision}"]
        out[f"dp_over_forward_backward/{precision}"] = (med[f"dp_sgd_step/{precision}"]
                                                       / med[f"forward_backward/{precision}"])
    return out
