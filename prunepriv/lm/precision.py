"""Numeric precision: fp32 everywhere, or bf16 frozen weights where the hardware multiplies bf16 natively.

``auto`` picks bf16 on a CPU with AMX or AVX-512 BF16 instructions and on a
CUDA GPU of compute capability ≥ 8.0 (Ampere and later), fp32 elsewhere.
Only frozen weights and the activations through them go to bf16; LoRA
weights, their gradients, per-sample gradients, clipping, noise, optimizer
state, logits' log-softmax and every loss stay in fp32 (the mixed precision
of Micikevicius et al. 2018, with bf16's fp32 exponent range so no loss scaling).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from prunepriv.config import PRECISIONS
from prunepriv.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return frozenset()
    for line in info.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``: ``auto`` resolved for ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def precision_of(model: torch.nn.Module) -> str:
    """``bf16`` when ``model``'s weights are bf16 (cast by :func:`prunepriv.lm.models.cast_weights`), else ``fp32``."""
    return "bf16" if any(p.dtype == torch.bfloat16 for p in model.parameters()) else "fp32"
