"""``prunepriv bench``: latency of a pruned model, the cost of DP-SGD over a plain LoRA step, throughput."""
from __future__ import annotations

import os
from importlib.metadata import version

import torch

from prunepriv.commands.prune import calibration, choose
from prunepriv.compress.latency import latency_ratio
from prunepriv.compress.pruning import check_count
from prunepriv.config import Profile, check_strategy
from prunepriv.data import synthetic_corpus
from prunepriv.errors import PrunePrivError
from prunepriv.lm.models import load_model, model_num_layers, resolve_device
from prunepriv.lm.precision import bf16_native
from prunepriv.privacy.overhead import dp_overhead
from prunepriv.privacy.throughput import WORK, throughput

BUSY_LOAD = 0.5          # a 1-minute load average above this many runnable tasks per CPU: timings are unreliable
PACKAGES = ("prunepriv", "torch", "transformers", "peft", "opacus")


def machine_state() -> dict:
    """What a timing depends on besides the code: threads, CPUs, the load average before the run
    (``busy`` when its 1-minute value exceeds :data:`BUSY_LOAD` per CPU) and package versions."""
    load = os.getloadavg()
    cpus = os.cpu_count() or 1
    return {"threads": torch.get_num_threads(), "cpus": cpus, "load_average": [round(x, 2) for x in load],
            "busy": load[0] > BUSY_LOAD * cpus, "versions": {p: version(p) for p in PACKAGES}}


def busy_warning(state: dict) -> str | None:
    """A one-line warning when the machine was busy before the run, else ``None``."""
    if not state["busy"]:
        return None
    return (f"the machine was busy before this benchmark (1-minute load average {state['load_average'][0]} on "
            f"{state['cpus']} CPUs): its timings are unreliable; rerun when it is idle")


def latency(profile: Profile, remove: int, strategy: str = "cosine") -> dict:
    """Prefill and decode time of the model with ``remove`` layers removed by ``strategy``, relative
    to the unpruned model, with the profile's ``latency`` settings."""
    if strategy == "greedy-loss":
        raise PrunePrivError("bench latency supports cosine, block, last and random")
    check_strategy(strategy)
    num_layers = model_num_layers(profile.model)
    check_count(remove, num_layers)
    reads = strategy in ("cosine", "block") and remove
    texts = calibration(profile, profile.similarity.n_samples) if reads else []    # refused before the weights load
    model, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    layers, _ = choose(model, tokenizer, profile, strategy, remove, num_layers, texts)
    c = profile.latency
    result = latency_ratio(model, layers, prompt_length=c.prompt_length, new_tokens=c.new_tokens,
                           repeats=c.repeats, warmup=c.warmup, seed=profile.seed)
    return {**result, "strategy": strategy}


def dp_step_overhead(profile: Profile, batch_size: int, max_length: int, repeats: int, warmup: int) -> dict:
    """Time and memory of a DP-SGD LoRA step against a non-private one, on synthetic notes."""
    model, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    texts = synthetic_corpus(profile.seed).texts("train", include_canaries=False)
    return dp_overhead(model, tokenizer, texts, batch_size, max_length, repeats, warmup, profile.seed)


def step_throughput(profile: Profile, batch_size: int, max_length: int, repeats: int, warmup: int) -> dict:
    """Records per second in fp32 and bf16 (:func:`prunepriv.privacy.throughput.throughput`), on synthetic notes."""
    model, tokenizer = load_model(profile.model, device=profile.device, precision="fp32")
    texts = synthetic_corpus(profile.seed).texts("train", include_canaries=False)
    result = throughput(model, tokenizer, texts, batch_size, max_length, repeats, warmup, profile.seed)
    return {**result, "bf16_native": bf16_native(resolve_device(profile.device))}


def throughput_lines(result: dict) -> str:
    """The throughput report as a few lines of text."""
    rate, ratio = result["records_per_s"], result["ratios"]
    lines = [f"{result['batch_size']} records, {result['tokens']} tokens, {result['layers']} layers, "
             f"{result['device']}, {result['threads']} threads, bf16 native: {result['bf16_native']}"]
    for work in WORK:
        lines.append(f"{work:17s} fp32 {rate[work + '/fp32']:7.2f} rec/s   bf16 {rate[work + '/bf16']:7.2f} rec/s   "
                     f"speed-up {ratio[work + '_bf16_speedup']:.2f}x")
    for name in ("non_private", "forward_backward"):
        lines.append(f"DP-SGD / {name.replace('_', ' ')}: fp32 {ratio[f'dp_over_{name}/fp32']:.2f}, "
                     f"bf16 {ratio[f'dp_over_{name}/bf16']:.2f}")
    return "\n".join(lines)
