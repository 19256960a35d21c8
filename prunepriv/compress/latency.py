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
from prunepriv.privacy.train import LoRASpec, add_lora, make_collate, sequence_nll


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_once(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for one prefill and for ``new_tokens`` cached greedy decode steps."""
    device = prompt.device
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True, **extra)
    _sync(device)
    prefill = time.perf_counter() - start
    past = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    return prefill, time.perf_counter() - start


def compare_latency(models: dict[str, nn.Module], prompt_length: int = 128, new_tokens: int = 32,
                    repeats: int = 5, warmup: int = 2, seed: int = 0) -> dict[str, Latency]:
    """Interleaved timing of several models on the same random prompt."""
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
    return {
        name: Latency(statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs),
                      prompt_length, new_tokens)
        for name, runs in times.items()
    }


def latency_ratio(model: nn.Module, layers: list[int], **kwargs) -> dict:
    """Pruned-versus-unpruned latency ratios measured in this process.

    Returns the layer count, layers removed, measured prefill and decode time
    ratios (pruned / unpruned), the ideal ratio (L - K) / L, and raw medians.
    """
    num_layers = len(decoder_layers(model))
    pruned = remove_layers(copy.deepcopy(model), layers)
    result = compare_latency({"unpruned": model, "pruned": pruned}, **kwargs)
    base, small = result["unpruned"], result["pruned"]
    return {
        "layers": num_layers,
        "removed": len(layers),
        "removed_layers": list(layers),
        "prefill_ratio": small.prefill_s / base.prefill_s,
        "decode_ratio": small.decode_s / base.decode_s,
        "ideal_ratio": (num_layers - len(layers)) / num_layers,
        "unpruned": {**asdict(base), "prefill_tokens_per_s": base.prefill_tokens_per_s,
                     "decode_tokens_per_s": base.decode_tokens_per_s},
        "pruned": {**asdict(small), "prefill_tokens_per_s": small.prefill_tokens_per_s,
                   "decode_tokens_per_s": small.decode_tokens_per_s},
        "threads": torch.get_num_threads(),
        "device": str(next(model.parameters()).device),
    }


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as handle:   # Linux: reset VmHWM to the current RSS
                handle.write("5")
        except OSError:
            pass


def _peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def dp_overhead(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 128,
                repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Seconds per example of a DP-SGD LoRA step and of a non-private one.

    Both train the same LoRA adapter on the same batch: the private step
    computes per-sample gradients (Opacus hooks), clips and adds noise; the
    non-private step is a plain backward pass. Steps are interleaved;
    peak memory (CUDA allocator, or the process's peak RSS on the CPU) is
    measured in a separate pass for each.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer


    device = next(model.parameters()).device
    torch.manual_seed(seed)
    encoded = tokenizer(texts[:batch_size], truncation=True, max_length=max_length)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {k: v.to(device) for k, v in make_collate(pad)([torch.tensor(x) for x in encoded]).items()}

    def build(private: bool):
        peft_model = add_lora(copy.deepcopy(model), LoRASpec())
        peft_model.train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        net = peft_model
        if private:
            net = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean")
            opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch_size,
                              generator=torch.Generator(device=device).manual_seed(seed))

        def step() -> float:
            _sync(device)
            start = time.perf_counter()
            sequence_nll(net, batch).mean().backward()
            opt.step()
            opt.zero_grad()
            _sync(device)
            return time.perf_counter() - start
        return step

    steps = {"non_private": build(False), "dp_sgd": build(True)}
    memory = {}
    for name, step in steps.items():
        _reset_peak_memory(device)
        step()
        memory[name] = _peak_memory_mb(device)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
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
