"""The cost of privacy per training step: a DP-SGD LoRA step against a plain one
(time per example and peak memory), on the same model and batch."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
from torch import nn

from prunepriv.compress.latency import synchronize
from prunepriv.lm.evaluation import sequence_nll
from prunepriv.lm.lora import add_lora
from prunepriv.lm.models import decoder_layers
from prunepriv.privacy.batching import make_collate
from prunepriv.privacy.specs import default_specs


def dp_overhead(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 128,
                repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Seconds per example of a DP-SGD LoRA step and of a non-private one.

    Both train the same LoRA adapter on the same batch: the private step
    computes per-sample gradients (Opacus hooks), clips and adds noise; the
    non-private step is a plain backward pass. Steps are interleaved;
    peak memory (CUDA allocator, or the process's peak RSS on the CPU) is
    measured in a separate pass for each.
    """
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    batch = encode_batch(tokenizer, texts, batch_size, max_length, device)
    steps = {"non_private": lora_step(model, batch, False, batch_size, seed),
             "dp_sgd": lora_step(model, batch, True, batch_size, seed)}
    memory = peak_memories(steps, device)
    times = interleaved_times(steps, warmup, repeats)
    per_example = {name: statistics.median(t) / batch["input_ids"].shape[0] for name, t in times.items()}
    return {
        "batch_size": int(batch["input_ids"].shape[0]), "tokens_per_example": max_length,
        "layers": len(decoder_layers(model)),
        "non_private_s_per_example": per_example["non_private"], "dp_sgd_s_per_example": per_example["dp_sgd"],
        "ratio": per_example["dp_sgd"] / per_example["non_private"],
        "peak_memory_mb": memory,
        "peak_memory_note": ("CUDA max_memory_allocated" if device.type == "cuda"
                             else "process peak RSS (VmHWM) after one step; includes the model copies"),
        "device": str(device), "threads": torch.get_num_threads(),
    }


def encode_batch(tokenizer, texts: list[str], batch_size: int, max_length: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The first ``batch_size`` texts, tokenized and right-padded into one batch on ``device``."""
    encoded = tokenizer(texts[:batch_size], truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {k: v.to(device) for k, v in make_collate(pad)([torch.tensor(x) for x in encoded]).items()}


def peak_memories(steps: dict[str, Callable[[], float]], device: torch.device) -> dict[str, float]:
    """Each step's peak memory (MB), measured by running it once after a reset."""
    memory = {}
    for name, step in steps.items():
        reset_peak_memory(device)
        step()
        memory[name] = peak_memory_mb(device)
    return memory


def lora_step(model: nn.Module, batch: dict[str, torch.Tensor], private: bool, batch_size: int,
              seed: int) -> Callable[[], float]:
    """A timed training step of a fresh LoRA adapter (the default profile's) on a copy of ``model``."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    device = next(model.parameters()).device
    peft_model = add_lora(copy.deepcopy(model), default_specs()[0])
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    net = peft_model
    if private:
        net = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch_size,
                          generator=torch.Generator(device=device).manual_seed(seed))

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        sequence_nll(net, batch).mean().backward()
        opt.step()
        opt.zero_grad()
        synchronize(device)
        return time.perf_counter() - start
    return step


def interleaved_times(steps: dict[str, Callable[[], float]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds, the steps taking turns in each."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return times


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as handle:   # Linux: reset VmHWM to the current RSS
                handle.write("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
