"""What a fine-tuning run leaves behind: :class:`TrainResult` (what :func:`finetune`
returns) and :class:`FinetuneRun` (the run as a row of ``finetune.csv``, the form
in which every later stage reads it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from prunepriv.privacy.specs import PrivacyRecord, epsilon_label
from prunepriv.privacy.uses import uncovered


@dataclass
class TrainResult:
    """Outputs of one fine-tuning run."""

    output_dir: Path
    privacy: PrivacyRecord
    log: list[dict[str, Any]]
    seconds: float
    resumed_from_step: int
    model: Any = None                   # the trained PeftModel (wraps the caller's model in place)
    world_size: int = 1                 # processes that trained it (torch.distributed), 1 without

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"


MATCHED = "-matched"   # model-key suffix of the utility-matched non-private runs (finetune.utility_match)


def matched_name(model: str) -> str:
    """The model key of ``model``'s utility-matched non-private runs, e.g. ``pruned-matched``."""
    return model + MATCHED


def base_model(model: str) -> str:
    """The base model (``unpruned`` or ``pruned``) a run's model key starts from."""
    return model.removesuffix(MATCHED)


def is_matched(model: str) -> bool:
    """Whether a model key names utility-matched runs."""
    return model.endswith(MATCHED)


def run_name(model: str, epsilon: float, replicate: int = 0) -> str:
    """Folder name of a run of ``model`` at target ``epsilon``, e.g. ``pruned-eps-3`` (replicate 0) or
    ``pruned-eps-3-rep2``."""
    return f"{model}-eps-{epsilon_label(epsilon)}" + (f"-rep{replicate}" if replicate else "")


@dataclass(kw_only=True)
class FinetuneRun:
    """One fine-tuning run: a row of ``finetune.csv``, its fields the columns in order.

    ``run_dir`` is the run's folder as written in the table: relative to the
    working folder (e.g. ``results/smoke/finetune/pruned-eps-3``), absolute
    when outside it. Evaluation columns a producer did not measure default to
    NaN (``None`` for counts), so a run known only from its ``privacy.json``
    is a record too.
    """

    model: str
    layers: int | None = None
    target_epsilon: float
    replicate: int = 0                  # which independent run of its (model, ε) (finetune.replicates)
    seed: int | None = None             # the run's training seed (its batches and, when seeded, its noise)
    epsilon_rdp: float
    epsilon_prv: float | None
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float | None = None
    n_train: int | None = None
    perplexity_private_before: float = math.nan
    perplexity_general_before: float = math.nan
    perplexity_private: float = math.nan
    perplexity_private_low: float = math.nan     # 95% patient-cluster bootstrap interval (prunepriv.lm.evaluation)
    perplexity_private_high: float = math.nan
    perplexity_general: float = math.nan
    eval_records: int | None = None     # held-out private records the perplexities are measured on
    lora_rank: int | None = None        # the run's recipe: LoRA rank and targets ('+'-joined), peak learning
    lora_targets: str = ""              # rate, expected logical batch and epochs (DP and non-private differ)
    learning_rate: float = math.nan
    batch_size: int | None = None
    epochs: float = math.nan
    matched_epsilon: float = math.nan   # utility-matched runs: the ε of the DP run whose utility they match
    stop_perplexity: float = math.nan   # utility-matched runs: the held-out perplexity they stop at (that DP run's)
    final_loss: float = math.nan
    loss_spike: float = math.nan        # the largest step loss over the lowest before it (loss_spike below)
    train_seconds: float = math.nan
    run_dir: str
    uncovered_uses: str = ""            # earlier private uses of data no ε covers (prunepriv.privacy.uses), "; "-joined

    @property
    def label(self) -> str:
        """The run's folder name, e.g. ``pruned-eps-3``: names its per-run files in later stages."""
        return Path(self.run_dir).name

    @property
    def adapter_dir(self) -> Path:
        return Path(self.run_dir) / "adapter"

    def to_row(self, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """The row as a dict: every column in table order, or only ``columns`` in their order."""
        names = [f.name for f in fields(self)] if columns is None else list(columns)
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_row(cls, row) -> FinetuneRun:
        """A run from a table row: a dict, a pandas Series or an ``itertuples()`` tuple; other columns are ignored."""
        values = row._asdict() if hasattr(row, "_asdict") else dict(row)
        names = {f.name for f in fields(cls)}
        if isinstance(values.get("uncovered_uses"), float):           # an empty text read back from CSV as NaN
            values["uncovered_uses"] = ""
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_result(cls, result, *, model: str, layers: int, target_epsilon: float, before: dict[str, float],
                    after: dict[str, float], run_dir: str, seed: int | None = None,
                    replicate: int = 0, matched_epsilon: float = math.nan,
                    stop_perplexity: float = math.nan) -> FinetuneRun:
        """The row of a finished :class:`TrainResult`, with perplexities ``before`` and ``after`` fine-tuning
        (keys ``perplexity_private`` and ``perplexity_general``)."""
        r = result.privacy
        return cls(model=model, layers=layers, target_epsilon=target_epsilon, replicate=replicate, seed=seed,
                   epsilon_rdp=r.epsilon_rdp,
                   epsilon_prv=r.epsilon_prv, delta=r.delta, noise_multiplier=r.noise_multiplier,
                   sample_rate=r.sample_rate, steps=r.steps, max_grad_norm=r.max_grad_norm, n_train=r.n_train,
                   perplexity_private_before=before["perplexity_private"],
                   perplexity_general_before=before["perplexity_general"],
                   perplexity_private=after["perplexity_private"], perplexity_general=after["perplexity_general"],
                   perplexity_private_low=after.get("perplexity_private_low", math.nan),
                   perplexity_private_high=after.get("perplexity_private_high", math.nan),
                   matched_epsilon=matched_epsilon, stop_perplexity=stop_perplexity,
                   final_loss=result.log[-1]["loss"] if result.log else float("nan"),
                   loss_spike=loss_spike([entry["loss"] for entry in result.log]),
                   train_seconds=result.seconds, run_dir=run_dir,
                   uncovered_uses="; ".join(u.text() for u in uncovered(r.data_uses[:-1])))

    @classmethod
    def from_privacy(cls, *, model: str, run_dir: str, record: dict[str, Any], target_epsilon: float,
                     default_delta: float) -> FinetuneRun:
        """A run known only from its ``privacy.json`` ``record`` (empty: a run that left none, taken as non-private)."""
        return cls(model=model, run_dir=run_dir, target_epsilon=target_epsilon,
                   epsilon_rdp=record.get("epsilon_rdp", math.inf), epsilon_prv=record.get("epsilon_prv", math.inf),
                   delta=record.get("delta", default_delta), noise_multiplier=record.get("noise_multiplier", 0.0),
                   sample_rate=record.get("sample_rate", 0.0), steps=record.get("steps", 0),
                   max_grad_norm=record.get("max_grad_norm"), n_train=record.get("n_train"))


SPIKE = 1.5      # a smoothed loss this many times the best before it is a spike (a bug to fix, not a result)
SMOOTHING = 10   # the loss is smoothed over a tenth of the run's steps (at least one) before spikes are sought


def smoothed(losses: Sequence[float]) -> list[float]:
    """Trailing moving average of ``losses`` over ``max(1, len // SMOOTHING)`` steps: one logical batch's
    loss depends on which records it drew (short canaries or long notes), a spike is a trend over steps."""
    window = max(1, len(losses) // SMOOTHING)
    return [sum(losses[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(losses))]


def loss_spike(losses: Sequence[float]) -> float:
    """max over steps t ≥ 1 of smoothed[t] / min(smoothed[:t]) (:func:`smoothed`): 1 or less when the
    smoothed loss never rose above its best so far; a run whose loss jumps from 3.86 to 6.77 and stays
    there scores about 1.75 (NaN with fewer than two steps)."""
    finite = smoothed([x for x in losses if math.isfinite(x)])
    if len(finite) < 2:
        return math.nan
    best, worst = finite[0], 0.0
    for x in finite[1:]:
        worst = max(worst, x / best)
        best = min(best, x)
    return worst


def runs_of(table) -> list[FinetuneRun]:
    """Every run of a ``finetune.csv`` table (a pandas DataFrame), in row order."""
    return [FinetuneRun.from_row(row) for row in table.to_dict("records")]
