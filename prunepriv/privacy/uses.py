"""Every use of data that shaped a model before it was fine-tuned, carried by the model.

A pruning step that reads text — choosing layers by similarity, SLEB's greedy
search, Wanda's input norms, private layer selection — appends a
:class:`DataUse` to ``config.prunepriv_data_uses`` of the model it returns, so
the record travels with ``save_pretrained``. Fine-tuning
(:func:`prunepriv.privacy.train.finetune`) copies the base model's uses into
its privacy record, adds its own, and names every private use that no finite
ε covers: the run's ε covers the training records through DP-SGD and nothing
else, so a private use without DP of its own is stated, never folded in.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

USES_KEY = "prunepriv_data_uses"


@dataclass
class DataUse:
    """One use of data: what it decided, on which text, how many records, and its privacy."""

    purpose: str                        # e.g. "layer choice (cosine similarity)"
    data: str                           # e.g. "general English passages (public)"
    records: int
    private: bool
    epsilon: float | None = None        # the use's own ε when it was differentially private

    @property
    def covered(self) -> bool:
        """Public, or private under a finite ε of its own."""
        return not self.private or (self.epsilon is not None and math.isfinite(self.epsilon))

    def text(self) -> str:
        """One line: ``purpose on N records of data — public / private, ε = … / private, not covered``."""
        if not self.private:
            status = "public"
        elif self.covered:
            status = f"private, differentially private at ε = {self.epsilon:.3g}"
        else:
            status = "private, not differentially private: no ε covers it"
        return f"{self.purpose} on {self.records} records of {self.data} — {status}"


def record_use(model, use: DataUse) -> None:
    """Append ``use`` to the uses ``model`` (or its config) carries."""
    config = getattr(model, "config", model)
    setattr(config, USES_KEY, [*(getattr(config, USES_KEY, None) or []), asdict(use)])


def data_uses(model) -> list[DataUse]:
    """The uses ``model`` (or its config) carries, oldest first."""
    config = getattr(model, "config", model)
    return [DataUse(**item) for item in getattr(config, USES_KEY, None) or []]


def uncovered(uses: list[DataUse] | list[dict[str, Any]]) -> list[DataUse]:
    """The private uses that no finite ε covers."""
    return [u for u in (DataUse(**x) if isinstance(x, dict) else x for x in uses) if not u.covered]
