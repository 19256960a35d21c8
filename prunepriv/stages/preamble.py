"""What every notebook does first: one call instead of a repeated preamble."""
from __future__ import annotations

from pathlib import Path

import torch

from prunepriv.config import Profile, load_profile
from prunepriv.results import Run


def stage(notebook: str, profile: str | Path | Profile, output_root: str | Path | None = None) -> Run:
    """Open stage ``notebook`` (its stem, as in the registry) of ``profile``.

    Loads and validates the profile (a name, a YAML path or a loaded
    :class:`~prunepriv.config.Profile`), seeds torch with the profile's seed and
    returns the :class:`~prunepriv.results.Run` that loads upstream artifacts
    and saves this stage's by id (``run.load("tab:finetuning")``). ``output_root``
    ``None`` is the repository root, wherever the notebook was opened from.
    """
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    run = Run(profile, notebook, output_root)
    torch.manual_seed(profile.seed)
    return run
