"""``prunepriv prune``: remove layers from a Hugging Face model and save it with ``save_pretrained``."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prunepriv.cards import write_pruned_card
from prunepriv.compress.pruning import (
    check_count,
    check_layers,
    choose_layers,
    remove_layers,
)
from prunepriv.config import Profile, check_strategy
from prunepriv.data import corpus_for, load_records
from prunepriv.errors import PrunePrivError
from prunepriv.lm.models import load_model, model_num_layers
from prunepriv.results import check_writable, share_like_umask
from prunepriv.stages.experiments import (
    calibration_texts,
    greedy_order_for,
    measure_similarity,
)


@dataclass
class Pruned:
    """What ``prune`` did."""

    layers: list[int]
    num_layers: int
    output: Path


def similarity_for(model, tokenizer, profile: Profile):
    """Layer similarity on the calibration split, with the profile's ``similarity`` sizes."""
    s = profile.similarity
    texts = calibration_texts(corpus_for(profile), s.n_samples)
    return measure_similarity(model, tokenizer, texts, s.max_length, s.batch_size)


def choose(model, tokenizer, profile: Profile, strategy: str, remove: int, num_layers: int) -> list[int]:
    """The ``remove`` layers that ``strategy`` picks for this model on the profile's calibration text."""
    similarity = greedy = None
    if strategy in ("cosine", "block") and remove:
        similarity = similarity_for(model, tokenizer, profile)
    if strategy == "greedy-loss":
        s = profile.similarity
        texts = calibration_texts(corpus_for(profile), s.n_samples)
        greedy, _ = greedy_order_for(model, tokenizer, texts, remove, s.max_length, s.batch_size)
    return choose_layers(strategy, remove, num_layers, similarity, profile.seed, greedy)


def prune(profile: Profile, output: str | Path, remove: int | None = None, layers: list[int] | None = None,
          strategy: str = "cosine") -> Pruned:
    """Remove explicit ``layers``, or ``remove`` layers chosen by ``strategy``; save to ``output``.

    Every check that needs only the model's config (and the data file) runs before the weights load.
    """
    output = check_writable(output)
    if output.is_dir() and any(output.iterdir()):
        raise PrunePrivError(f"output folder {output} exists and is not empty")
    num_layers = model_num_layers(profile.model)
    explicit = layers is not None
    if layers is not None:
        layers = check_layers(layers, num_layers)
    else:
        check_strategy(strategy)
        check_count(remove, num_layers)
        if profile.data.source != "synthetic":
            load_records(profile.data.source, profile.data.text_field)   # bad data fails before the model loads
    model, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    if layers is None:
        layers = choose(model, tokenizer, profile, strategy, remove, num_layers)
    remove_layers(model, layers)
    save_atomically(model, tokenizer, output,
                    lambda folder: write_pruned_card(folder, profile.model, list(layers), num_layers,
                                                     "explicit" if explicit else strategy, profile.data.source, output))
    return Pruned(list(layers), num_layers, output)


def save_atomically(model, tokenizer, output: Path, card=None) -> None:
    """``save_pretrained`` of model and tokenizer (and ``card(folder)``, the model card) into a
    temporary folder, renamed into place when complete, readable as the umask allows."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{output.name}-", dir=output.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            card(tmp)
        share_like_umask(tmp)
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
