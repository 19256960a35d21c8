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
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunepriv import progress  # noqa: F401,I001 - first: its warning filters apply to everything loaded later

if TYPE_CHECKING:
    # The public names. They load on first use (PEP 562, ``__getattr__`` below), so ``import prunepriv``
    # does not import torch: the process that runs each notebook of the batch starts seconds sooner.
    # These lines are the one list of them: the loader reads it, and stage fingerprints
    # (``pipeline.reproduce.code_dependencies``) follow these imports like any other.
    from prunepriv.compress.pruning import choose_layers, greedy_loss_order, remove_layers  # noqa: F401,I001
    from prunepriv.compress.similarity import LayerSimilarity, layer_similarity  # noqa: F401
    from prunepriv.config import Profile, load_profile  # noqa: F401
    from prunepriv.data import Corpus, corpus_for, general_english, load_records, synthetic_corpus  # noqa: F401
    from prunepriv.errors import PrunePrivError  # noqa: F401
    from prunepriv.lm.evaluation import perplexity  # noqa: F401
    from prunepriv.lm.models import decoder_layers, load_model, load_tokenizer  # noqa: F401
    from prunepriv.results import Run  # noqa: F401
    from prunepriv.stages.preamble import stage  # noqa: F401

__version__ = "0.1.0"


def _exports() -> dict[str, str]:
    """Public name → the module that defines it, read from the ``TYPE_CHECKING`` imports above."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return {alias.asname or alias.name: node.module for node in block.body
            if isinstance(node, ast.ImportFrom) for alias in node.names}


_EXPORTS = _exports()
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name on first use and keep it (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prunepriv' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
