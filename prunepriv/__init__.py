"""prunepriv: PrunePrivyTune — cosine-similarity layer pruning, DP-SGD LoRA
fine-tuning and memorization audits (Garg & Torra, Machine Learning 2026).

The notebooks in ``notebooks/`` call this package; everything here also works
from plain Python and from the ``prunepriv`` command line. Subpackages by
concern: ``lm`` (models, text, evaluation, generation, LoRA), ``compress``
(similarity, pruning, sparsity, latency), ``privacy`` (DP-SGD training and
accounting, private selection, federated pruning), ``attacks`` (membership,
exposure, extraction, audit), ``stages`` (what each notebook calls, plots),
``report`` (claims, LaTeX, paper, verify) and ``pipeline`` (the registry of
stages and artifacts, the cached batch).
"""
from prunepriv import progress  # noqa: F401,I001 - first: its warning filters apply to every import below
from prunepriv.compress.pruning import choose_layers, greedy_loss_order, remove_layers
from prunepriv.compress.similarity import LayerSimilarity, layer_similarity
from prunepriv.config import Profile, load_profile
from prunepriv.data import (
    Corpus,
    corpus_for,
    general_english,
    load_records,
    synthetic_corpus,
)
from prunepriv.errors import PrunePrivError
from prunepriv.lm.evaluation import perplexity
from prunepriv.lm.models import decoder_layers, load_model, load_tokenizer
from prunepriv.results import Run
from prunepriv.stages.preamble import stage

__version__ = "0.1.0"

__all__ = [
    "Corpus", "LayerSimilarity", "Profile", "PrunePrivError", "Run", "choose_layers", "corpus_for",
    "decoder_layers", "general_english", "greedy_loss_order", "layer_similarity", "load_model",
    "load_profile", "load_records", "load_tokenizer", "perplexity", "remove_layers", "stage", "synthetic_corpus",
]
