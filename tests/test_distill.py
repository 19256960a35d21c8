"""DPKD's student loss (prunepriv.compress.distill) against an independent computation, and the
trainer's use of a replaced loss (its digest, its steps)."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from prunepriv.compress.distill import Distillation, distillation_loss
from prunepriv.lm.evaluation import sequence_nll
from prunepriv.privacy.selection import composed_epsilon
from prunepriv.privacy.specs import (
    LoRASpec,
    PrivacySpec,
    TrainSpec,
    split_noise_multiplier,
    total_steps,
)
from prunepriv.privacy.train import finetune, plan_run

TEXTS = [f"note {i}: the patient{' is' * (i % 4)} well today" for i in range(16)]
LORA = LoRASpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
TRAIN = TrainSpec(epochs=0.5, learning_rate=1e-3, batch_size=4, physical_batch_size=2, max_length=32,
                  checkpoint_every=1000, seed=0, noise="seeded")


def _batch(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _reference(student, teacher, ids, mask, alpha, temperature):
    """Per record, token by token: (1 − α)·(−log p_s(target)) + α·T²·Σ_v p_t(v) (log p_t(v) − log p_s(v))."""
    out = []
    for b in range(ids.shape[0]):
        terms = []
        for i in range(ids.shape[1] - 1):
            if not mask[b, i + 1]:
                continue
            log_s = torch.log_softmax(student[b, i].double(), -1)
            log_st, log_tt = (torch.log_softmax(x[b, i].double() / temperature, -1) for x in (student, teacher))
            kl = float((log_tt.exp() * (log_tt - log_st)).sum()) * temperature ** 2
            terms.append((1 - alpha) * -float(log_s[ids[b, i + 1]]) + alpha * kl)
        out.append(sum(terms) / len(terms))
    return torch.tensor(out, dtype=torch.float64)


def test_loss_matches_a_token_by_token_reference(byte_tokenizer):
    torch.manual_seed(0)
    batch = _batch(byte_tokenizer, ["short", "a much longer record here"])
    student, teacher = (torch.randn(*batch["input_ids"].shape, 300) * 3 for _ in range(2))
    got = distillation_loss(student, teacher, batch["input_ids"], batch["attention_mask"], 0.3, 2.0)
    want = _reference(student, teacher, batch["input_ids"], batch["attention_mask"], 0.3, 2.0)
    assert torch.allclose(got.double(), want, rtol=1e-5)


def test_alpha_zero_is_the_training_nll_and_a_copied_teacher_adds_nothing(byte_tokenizer):
    model = tiny_model("llama", layers=2).eval()
    batch = _batch(byte_tokenizer, TEXTS[:3])
    with torch.no_grad():
        nll = sequence_nll(model, batch)
        assert torch.allclose(Distillation(model, alpha=0.0)(model, batch), nll, atol=1e-6)
        same = Distillation(model, alpha=0.6, temperature=1.5)(model, batch)
    assert torch.allclose(same, 0.4 * nll, atol=1e-5)               # KL(p ‖ p) = 0


def test_a_records_loss_does_not_depend_on_its_batch(byte_tokenizer):
    torch.manual_seed(0)
    student, teacher = tiny_model("llama", layers=2).eval(), tiny_model("llama", layers=2).eval()
    loss = Distillation(teacher, alpha=0.5)
    with torch.no_grad():
        alone = loss(student, _batch(byte_tokenizer, TEXTS[5:6]))
        batched = loss(student, _batch(byte_tokenizer, [TEXTS[5], "x" * 40, TEXTS[2]]))
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        Distillation(torch.nn.Identity(), alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(torch.nn.Identity(), temperature=0)


def test_the_loss_and_its_teacher_enter_the_run_digest(tmp_path):
    model = tiny_model("llama", layers=2)
    spec = PrivacySpec(epsilon=3.0, delta=None, max_grad_norm=1.0, noise_multiplier=None, accountant="rdp")
    plain = plan_run(model, TEXTS, tmp_path, LORA, spec, TRAIN).digest
    one = plan_run(model, TEXTS, tmp_path, LORA, spec, TRAIN, loss_key=Distillation(model, teacher_digest="a").key)
    other = plan_run(model, TEXTS, tmp_path, LORA, spec, TRAIN, loss_key=Distillation(model, teacher_digest="b").key)
    assert len({plain, one.digest, other.digest}) == 3


def test_split_sigma_makes_two_runs_compose_to_the_target(byte_tokenizer, tmp_path):
    spec = PrivacySpec(epsilon=3.0, delta=None, max_grad_norm=1.0, noise_multiplier=None, accountant="rdp")
    sigma = split_noise_multiplier(spec, TRAIN, len(TEXTS), runs=2)
    split = PrivacySpec(epsilon=3.0, delta=None, max_grad_norm=1.0, noise_multiplier=sigma, accountant="rdp")
    teacher = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / "t", LORA, split, TRAIN,
                       progress=False)
    student = finetune(tiny_model("llama", layers=1), byte_tokenizer, TEXTS, tmp_path / "s", LORA, split, TRAIN,
                       progress=False, loss=Distillation(teacher.model.eval(), teacher_digest="t"))
    assert student.log and all(math.isfinite(e["loss"]) for e in student.log)
    assert student.privacy.steps == teacher.privacy.steps == total_steps(TRAIN, len(TEXTS))
    history = [(r.privacy.noise_multiplier, r.privacy.sample_rate, r.privacy.steps) for r in (teacher, student)]
    both = composed_epsilon(history, student.privacy.delta, "rdp")
    assert student.privacy.epsilon_rdp < both <= 3.0 * 1.01 and both > 3.0 * 0.97
