"""DP knowledge distillation (DPKD): a DP-trained teacher distilled into a smaller student under DP-SGD.

Anchor: Mireshghallah, Backurs, Inan, Wutschitz and Kulkarni, "Differentially
private model compression", NeurIPS 2022, DPKD: the teacher is fine-tuned on
the private data with DP-SGD; the student is then trained with DP-SGD on the
same private data, its loss mixing the task loss with the distillation loss
against the teacher's soft labels (Hinton et al. 2015). Both trainings read
the private records, so the student's guarantee is the *composition* of the
two DP-SGD runs; here each run gets the noise multiplier that makes the two
together reach the target ε (one accountant over both histories,
:func:`prunepriv.privacy.selection.composed_epsilon`).

Adapted to this package: teacher and student are LoRA fine-tunes (the authors
fine-tune every weight), the student is the layer-removed model, and the task
loss is the next-token NLL. Per record, over its real next-token positions:
``(1 − α)·NLL + α·T²·KL(p_teacher^T ‖ p_student^T)`` averaged over positions,
with ``p^T`` the softmax at temperature ``T``. The teacher sees only the
record itself (no other record of the batch), so a record's loss, and its
clipped gradient, depends on that record alone — the sensitivity argument of
DP-SGD holds unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Per-record ``(1 − α)·NLL + α·T²·KL(teacher ‖ student)`` averaged over real next-token positions, shape (B,), fp32.

    Only positions whose target is a real token are scored (as
    :func:`prunepriv.lm.evaluation.next_token_nll`); logits are gathered
    first, then upcast, so padding costs nothing.
    """
    real = attention_mask[:, 1:].bool()
    rows = real.nonzero(as_tuple=True)[0]
    student = student_logits[:, :-1][real].float()
    teacher = teacher_logits[:, :-1][real].float()
    nll = nn.functional.cross_entropy(student, input_ids[:, 1:][real], reduction="none")
    kl = nn.functional.kl_div(nn.functional.log_softmax(student / temperature, dim=-1),
                              nn.functional.log_softmax(teacher / temperature, dim=-1),
                              log_target=True, reduction="none").sum(-1) * temperature ** 2
    per_token = (1.0 - alpha) * nll + alpha * kl
    total = torch.zeros(real.shape[0], dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)
    return total / real.sum(1).to(per_token.dtype).clamp(min=1.0)


@dataclass
class Distillation:
    """The student's loss in DPKD (``loss`` of :func:`prunepriv.privacy.train.finetune`).

    ``teacher``: the DP-trained teacher (frozen, evaluated without gradients);
    ``teacher_digest``: its run's digest, so that a student trained against
    another teacher is never reloaded for this one.
    """

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 1.0
    teacher_digest: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation weight alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature}")

    @property
    def key(self) -> str:
        """What enters the student's run digest."""
        return f"distill(alpha={self.alpha:g},T={self.temperature:g},teacher={self.teacher_digest})"

    def __call__(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        logits = net(**inputs).logits
        with torch.no_grad():
            teacher = self.teacher(**inputs).logits
        return distillation_loss(logits, teacher, batch["input_ids"], batch["attention_mask"], self.alpha,
                                 self.temperature)
