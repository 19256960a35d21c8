"""Where the randomness that a DP guarantee rests on comes from: the Gaussian noise of
DP-SGD and of private layer selection, and the Poisson draws of DP-SGD's batches.

The guarantee holds only against someone who cannot regenerate that randomness.

* ``secure`` (the default of every run that does not ask otherwise): each generator is
  seeded with 63 (torch) or 128 (numpy) bits from the operating system's CSPRNG
  (:mod:`secrets`), the seeds are never written to disk (checkpoints hold no state of
  these generators; a resumed run draws fresh ones) and DP-SGD noise is drawn with
  Opacus's ``secure_mode`` sampling (a sum of four Gaussians, against the floating-point
  attacks of Jin et al. 2022, arXiv:2112.05307, after Holohan & Braghin 2021,
  arXiv:2107.10138 — as in Opacus's ``optimizers.optimizer._generate_noise``).
  The generators themselves are torch's Mersenne Twister and numpy's PCG64, not CSPRNGs:
  Opacus's fully cryptographic path (``PrivacyEngine(secure_mode=True)``) needs
  ``torchcsprng``, which is not among this project's dependencies.
* ``seeded``: every generator derives from the profile's ``seed`` so that a run is
  reproducible bit for bit. This is a research setting for synthetic data: anyone who
  knows the seed can regenerate the noise and the batches, so the run's ε holds
  against no one who does. The research profiles (``paper``, ``smoke``) set it and
  every privacy record states which was used.
"""
from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch

from prunepriv.config import NOISE_SOURCES
from prunepriv.errors import PrivacyConfigError

SECURE_NOTE = ("secure: generators seeded from the operating system (secrets), seeds never saved; "
               "DP-SGD noise with Opacus secure_mode sampling")


def seeded_note(seed: int) -> str:
    """The privacy record's words for a seeded run."""
    return (f"seeded from seed {seed} (research setting): anyone who knows the seed can regenerate the noise "
            "and the batches, and the stated epsilon does not hold against them")


def noise_note(source: str, seed: int) -> str:
    """What a privacy record says about the randomness of its run."""
    check_noise_source(source)
    return SECURE_NOTE if source == "secure" else seeded_note(seed)


def check_noise_source(source: str) -> None:
    """``secure`` or ``seeded``, else a :class:`~prunepriv.errors.PrivacyConfigError`."""
    if source not in NOISE_SOURCES:
        raise PrivacyConfigError(f"noise must be one of {', '.join(NOISE_SOURCES)}, got {source!r}")


def torch_generator(source: str, seed: int, device: Any = "cpu") -> torch.Generator:
    """A torch generator on ``device``: seeded with ``seed`` (``seeded``) or with 63 secret bits (``secure``)."""
    check_noise_source(source)
    return torch.Generator(device=device).manual_seed(seed if source == "seeded" else secrets.randbits(63))


def numpy_generator(source: str, *seed: int) -> np.random.Generator:
    """A numpy generator: from the integers ``seed`` (``seeded``) or from 128 secret bits (``secure``)."""
    check_noise_source(source)
    return np.random.default_rng(list(seed) if source == "seeded" else secrets.randbits(128))
