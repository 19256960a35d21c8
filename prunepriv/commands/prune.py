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
from prunepriv.config import SAVE_DTYPES, Profile, check_strategy
from prunepriv.data import corpus_for
from prunepriv.errors import PrunePrivError
from prunepriv.lm.models import STORAGE_DTYPES, cast_weights, load_model, model_num_layers, source_dtype
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
    calibration split of its data); a data file too small to split is refused here, before any weights load."""
    corpus = corpus_for(profile) if profile.data.calibration == "private" else None
    return calibration_texts(profile, corpus, n)


def choose(model, tokenizer, profile: Profile, strategy: str, remove: int, num_layers: int,
           texts: list[str]) -> tuple[list[int], DataUse | None]:
    """The ``remove`` layers that ``strategy`` picks for this model on the calibration ``texts``, and
    that use of data (``None``: the strategy reads no text)."""
    s = profile.similarity
    similarity = greedy = None
    if strategy in ("cosine", "block") and remove:
        similarity = measure_similarity(model, tokenizer, texts, s.max_length, s.batch_size)
    if strategy == "greedy-loss":
        greedy, _ = greedy_order_for(model, tokenizer, texts, remove, s.max_length, s.batch_size)
    layers = choose_layers(strategy, remove, num_layers, similarity, profile.seed, greedy)
    reads = strategy in ("cosine", "block", "greedy-loss") and remove
    return layers, layer_choice_use(profile, strategy, len(texts)) if reads else None


def prune(profile: Profile, output: str | Path, remove: int | None = None, layers: list[int] | None = None,
          strategy: str = "cosine", save_dtype: str = "source") -> Pruned:
    """Remove explicit ``layers``, or ``remove`` layers chosen by ``strategy``; save to ``output``.

    Every check that needs only the model's config (and the data file) runs before the weights load. The
    saved model keeps the source's dtype unless ``save_dtype`` says otherwise (:func:`save_dtype_of`).
    The data that chose the layers is recorded in the model's config (``prunepriv_data_uses``, read by
    ``finetune`` into its privacy record) and model card.
    """
    output = check_writable(output)
    if output.is_dir() and any(output.iterdir()):
        raise PrunePrivError(f"output folder {output} exists and is not empty")
    num_layers = model_num_layers(profile.model)
    source = source_dtype(profile.model)
    store = save_dtype_of(profile.model, save_dtype)
    explicit = layers is not None
    texts: list[str] = []
    if layers is not None:
        layers = check_layers(layers, num_layers)
    else:
        check_strategy(strategy)
        check_count(remove, num_layers)
        if strategy in ("cosine", "block", "greedy-loss") and remove:
            texts = calibration(profile, profile.similarity.n_samples)   # bad or too little data: refused here
    # the weights are read in fp32 (an exact widening of any source dtype); layers are chosen in fp32 too
    # (a decision, as in stage 01), and the kept layers are stored back in the source's dtype, bit for bit
    model, tokenizer = load_model(profile.model, device=profile.device, precision="fp32")
    use = None
    if layers is None:
        layers, use = choose(model, tokenizer, profile, strategy, remove, num_layers, texts)
    remove_layers(model, layers)
    cast_weights(model, STORAGE_DTYPES[store])
    if use is not None:
        record_use(model, use)
    save_atomically(model, tokenizer, output,
                    lambda folder: write_pruned_card(folder, profile.model, list(layers), num_layers,
                                                     "explicit" if explicit else strategy, use, output, store,
                                                     source))
    return Pruned(list(layers), num_layers, output)




def save_dtype_of(model: str, asked: str = "source") -> str:
    """The dtype a pruned model is stored in: the source model's own (``source``, the default: computing in
    bf16 on a bf16 machine never changes what is saved), or the one asked for (recorded in its
    ``config.json`` and model card). From the config alone, before any weights load."""
    if asked not in SAVE_DTYPES:
        raise PrunePrivError(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {asked!r}")
    return source_dtype(model) if asked == "source" else asked


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
