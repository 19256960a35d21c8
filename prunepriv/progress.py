"""Progress bars and known warnings: what a user sees on a terminal, and what stays out of
the executed notebooks of a batch run.

``prunepriv reproduce`` sets :data:`BATCH_ENV` for the notebook's kernel: every
update of a progress bar would be one more stderr output of the executed
notebook (hundreds per fine-tuning run), so bars are off there; the batch
itself shows one bar per stage on the terminal. Interactively (terminal,
JupyterLab) the bars stay on.

The warnings filtered below (at ``import prunepriv``) are raised by the
libraries for reasons that do not concern the results; each says why.
"""
from __future__ import annotations

import os
import warnings

BATCH_ENV = "PRUNEPRIV_BATCH"

# tqdm.auto draws widget bars in JupyterLab (ipywidgets is installed) and text bars elsewhere; an
# environment without ipywidgets falls back to text bars, which is all this warning says.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
# peft and Opacus probe `model.is_gradient_checkpointing` (peft/peft_model.py), which
# transformers 5 renamed; prunepriv never enables gradient checkpointing.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
# Opacus's per-sample-gradient hooks on LoRA layers whose inputs come from frozen weights: torch notes
# that no *input* requires a gradient. The per-sample gradients Opacus needs (of the LoRA weights)
# are computed from the captured activations and output gradients, which are complete.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                                          "to module outputs since no inputs require gradients", category=UserWarning)
# Opacus's RDP accountant: the best order is the largest of its default orders (up to 63), so the
# reported RDP ε is a valid upper bound that larger orders could tighten; the PRV accountant's ε,
# reported beside it, is the tight one. σ is calibrated with the same default orders.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", module="opacus")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm as auto_tqdm

if os.environ.get(BATCH_ENV):
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")     # transformers' "Loading weights" bars


def in_batch() -> bool:
    """Whether this process runs a notebook for ``prunepriv reproduce``."""
    return bool(os.environ.get(BATCH_ENV))


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, disabled in batch execution."""
    if in_batch():
        kwargs["disable"] = True
    return auto_tqdm(*args, **kwargs)
