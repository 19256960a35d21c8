"""What lets a fine-tuning run stop and go on: checkpoints with every RNG state,
the detection of a run that already finished, and reloading a saved adapter.

A checkpoint holds the LoRA weights, the optimizer state, the accountant's
history, every RNG state and the step count; a killed run started again
resumes from it and ends with the same steps, ε and weights. Only rank 0
reads and writes; :func:`prunepriv.privacy.distributed.read_on_rank0` shares
what it read with the other ranks.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunepriv.privacy.distributed import read_on_rank0
from prunepriv.privacy.record import TrainResult
from prunepriv.privacy.specs import PrivacyRecord
from prunepriv.results import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
ADAPTER_WEIGHTS = Path("adapter") / "adapter_model.safetensors"


def seed_everything(seed: int) -> None:
    """Seed the global torch, Python and numpy generators (LoRA's initial weights come from torch's)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_state(sampler_gen: torch.Generator | None, noise_gen: torch.Generator | None) -> dict[str, Any]:
    """Every generator a run draws from: its sampler's and noise's (``None``: not saved, see
    :mod:`prunepriv.privacy.noise`), and the global ones."""
    return {
        "sampler": sampler_gen.get_state() if sampler_gen is not None else None,
        "noise": noise_gen.get_state() if noise_gen is not None else None,
        "torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any], sampler_gen: torch.Generator, noise_gen: torch.Generator | None) -> None:
    """Put back the generators saved by :func:`rng_state` (one saved as ``None`` keeps its fresh state)."""
    if state["sampler"] is not None:
        sampler_gen.set_state(state["sampler"])
    if noise_gen is not None and state["noise"] is not None:
        noise_gen.set_state(state["noise"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically (a kill mid-write leaves the previous checkpoint)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(output_dir: Path, rank: int, world: int, device: torch.device) -> dict[str, Any] | None:
    """The run's checkpoint, if rank 0 has one (rank 0 reads, every rank resumes from it)."""
    path = Path(output_dir) / CHECKPOINT_FILE
    return read_on_rank0(lambda: torch.load(path, weights_only=False) if path.is_file() else None,
                         rank, world, device)


def finished_run(output_dir: Path, digest: str) -> TrainResult | None:
    """A completed run in ``output_dir`` with the same settings, if any."""
    run_file, privacy_file = output_dir / "run.json", output_dir / "privacy.json"
    if not (run_file.is_file() and privacy_file.is_file()):
        return None
    run = json.loads(run_file.read_text())
    if run.get("digest") != digest:
        return None
    record = PrivacyRecord(**json.loads(privacy_file.read_text()))
    return TrainResult(output_dir, record, run["log"], run["seconds"], run["resumed_from_step"],
                       world_size=run.get("world_size", 1))


def reload_adapter(output_dir: Path, peft_model, rank: int, world: int, device: torch.device) -> None:
    """Load a finished run's saved LoRA weights into ``peft_model`` (rank 0 reads, every rank loads)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(output_dir) / ADAPTER_WEIGHTS
    set_peft_model_state_dict(peft_model, read_on_rank0(lambda: load_file(path), rank, world, device))
