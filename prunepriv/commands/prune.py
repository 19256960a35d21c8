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
from prunepriv.privacy.uses import DataUse, record_use
from prunepriv.results import check_writable, share_like_umask
from prunepriv.stages.experiments import (
    calibration_texts,
    greedy_order_for,
    layer_choice_use,
    measure_similarity,
)


@dataclass
class Pruned:
    """What ``prune`` did."""

    layers: list[int]
    num_layers: int
    output: Path


def calibration(profile: Profile, n: int) -> list[str]:
    """``n`` calibration texts of the profile's ``data.calibration`` (public general English, or the private
    calibration split of its data)."""
    corpus = corpus_for(profile) if profile.data.calibration == "private" else None
    return calibration_texts(profile, corpus, n)


def choose(model, tokenizer, profile: Profile, strategy: str, remove: int,
           num_layers: int) -> tuple[list[int], DataUse | None]:
    """The ``remove`` layers that ``strategy`` picks for this model on the profile's calibration text, and
    that use of data (``None``: the strategy reads no text)."""
    s = profile.similarity
    similarity = greedy = None
    texts: list[str] = []
    if strategy in ("cosine", "block") and remove:
        texts = calibration(profile, s.n_samples)
        similarity = measure_similarity(model, tokenizer, texts, s.max_length, s.batch_size)
    if strategy == "greedy-loss":
        texts = calibration(profile, s.n_samples)
        greedy, _ = greedy_order_for(model, tokenizer, texts, remove, s.max_length, s.batch_size)
    layers = choose_layers(strategy, remove, num_layers, similarity, profile.seed, greedy)
    return layers, layer_choice_use(profile, strategy, len(texts)) if texts else None


def prune(profile: Profile, output: str | Path, remove: int | None = None, layers: list[int] | None = None,
          strategy: str = "cosine") -> Pruned:
    """Remove explicit ``layers``, or ``remove`` layers chosen by ``strategy``; save to ``output``.

    Every check that needs only the model's config (and the data file) runs before the weights load.
    The data that chose the layers is recorded in the model's config (``prunepriv_data_uses``, read by
    ``finetune`` into its privacy record) and model card.
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
        if profile.data.source != "synthetic" and profile.data.calibration == "private":
            load_records(profile.data.source, profile.data.text_field)   # bad data fails before the model loads
    model, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    use = None
    if layers is None:
        layers, use = choose(model, tokenizer, profile, strategy, remove, num_layers)
    remove_layers(model, layers)
    if use is not None:
        record_use(model, use)
    save_atomically(model, tokenizer, output,
                    lambda folder: write_pruned_card(folder, profile.model, list(layers), num_layers,
                                                     "explicit" if explicit else strategy, use, output))
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
