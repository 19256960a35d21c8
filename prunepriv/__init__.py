"""prunepriv: PrunePrivyTune — cosine-similarity layer pruning, DP-SGD LoRA
fine-tuning and memorization audits (Garg & Torra, Machine Learning 2026).

The notebooks in ``notebooks/`` call this package; everything here also works
from plain Python and from the ``prunepriv`` command line.
"""
from .config import Profile, load_profile
from .data import Corpus, corpus_for, general_english, load_records, synthetic_corpus
from .errors import PrunePrivError
from .evaluation import perplexity
from .models import decoder_layers, load_model, load_tokenizer
from .pruning import choose_layers, greedy_loss_order, remove_layers
from .results import Run
from .similarity import LayerSimilarity, layer_similarity

__version__ = "0.1.0"

__all__ = [
    "Corpus", "LayerSimilarity", "Profile", "PrunePrivError", "Run", "choose_layers", "corpus_for",
    "decoder_layers", "general_english", "greedy_loss_order", "layer_similarity", "load_model",
    "load_profile", "load_records", "load_tokenizer", "perplexity", "remove_layers", "synthetic_corpus",
]
