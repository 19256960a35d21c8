"""LoRA + DP-SGD: the silent-failure guard, accounting, resumption, bad input."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import tiny_model

from prunepriv.config import Profile
from prunepriv.errors import ModelError, PrunePrivError
from prunepriv.lm.lora import add_lora, linear_module_names
from prunepriv.privacy.specs import (
    LoRASpec,
    PrivacySpec,
    TrainSpec,
    epsilon_for,
    finetune_specs,
)
from prunepriv.privacy.train import finetune

TEXTS = [f"Patient {i} was seen in clinic and started on medication number {i % 7}." for i in range(48)]
LORA = LoRASpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
TRAIN = TrainSpec(epochs=1.0, learning_rate=1e-2, batch_size=12, physical_batch_size=5, max_length=32,
                  checkpoint_every=1, seed=0, noise="seeded")


def privacy_spec(**changes) -> PrivacySpec:
    """The built-in profile's non-private spec (ε = ∞, δ = 1/(10 N), C = 1, RDP) with ``changes``."""
    return dataclasses.replace(finetune_specs(Profile())[1][math.inf], **changes)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("privacy", [privacy_spec(epsilon=8.0), privacy_spec()], ids=["dp", "non-private"])
def test_lora_weights_move_and_only_they_train(byte_tokenizer, tmp_path, privacy):
    model = tiny_model("llama", layers=3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = finetune(model, byte_tokenizer, TEXTS, tmp_path, LORA, privacy, TRAIN, progress=False)
    lora = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())          # lora_B starts at zero
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in model.named_parameters() if "lora_" not in n}
    for name, before in frozen.items():
        assert torch.equal(base[name].detach(), before), name
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert result.privacy.steps == math.ceil(1.0 / (12 / 48)) == len(result.log)


@pytest.mark.parametrize("privacy", [privacy_spec(epsilon=8.0), privacy_spec()], ids=["dp", "non-private"])
def test_guard_catches_an_optimizer_that_updates_nothing(byte_tokenizer, tmp_path, monkeypatch, privacy):
    """If the optimizer never changes the LoRA weights, training stops with a clear error
    (for DP-SGD the loss and ε would still look normal)."""
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
    with pytest.raises(RuntimeError, match="LoRA weights did not change"):
        finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path, LORA, privacy, TRAIN,
                 progress=False)


def test_non_private_steps_clip_the_batch_gradient_at_c(byte_tokenizer, tmp_path, monkeypatch):
    """Issue 14: the non-private twin bounds each step's gradient norm by the run's C (here 10⁻³)."""
    norms = []
    step = torch.optim.AdamW.step

    def spy(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, closure)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    result = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path, LORA,
                      privacy_spec(max_grad_norm=1e-3), TRAIN, progress=False)
    assert len(norms) == result.privacy.steps and max(norms) <= 1e-3 * (1 + 1e-5)


def test_loss_spike_is_the_largest_rise_over_the_best_so_far():
    from prunepriv.privacy.record import SPIKE, loss_spike

    assert loss_spike([3.9, 3.86, 6.77, 3.5]) == pytest.approx(6.77 / 3.86)    # under 20 steps: unsmoothed
    assert loss_spike([5.0, 4.0, 3.0]) < 1.0 and math.isnan(loss_spike([4.0]))
    noisy = [3.0 + (1.8 if i % 2 else 0.0) - 0.01 * i for i in range(40)]       # batch-to-batch noise, no trend
    assert max(b / a for a, b in zip(noisy, noisy[1:])) > SPIKE                  # raw: one batch's jump fires
    assert loss_spike(noisy) < SPIKE                                             # smoothed over 4 steps: no spike
    jump = [3.0] * 20 + [6.0] * 20                                              # a real divergence still does
    assert loss_spike(jump) == pytest.approx(2.0)


def test_reported_epsilon_recomputes_from_logged_parameters(byte_tokenizer, tmp_path):
    result = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path, LORA,
                      privacy_spec(epsilon=3.0), TRAIN, progress=False)
    r = result.privacy
    assert r.private and r.noise_multiplier > 0 and r.delta < 1 / len(TEXTS)
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(r.noise_multiplier, r.sample_rate, r.steps)]
    assert acc.get_epsilon(r.delta) == pytest.approx(r.epsilon_rdp)
    assert r.epsilon_rdp <= 3.0 + 0.05                       # calibrated to the target
    assert r.epsilon_prv is not None and r.epsilon_prv <= r.epsilon_rdp + 1e-6
    assert result.log[-1]["epsilon"] == pytest.approx(r.epsilon_rdp)


def test_resume_after_interruption_matches_an_uninterrupted_run(byte_tokenizer, tmp_path):
    privacy = privacy_spec(epsilon=8.0)
    full = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / "full", LORA, privacy, TRAIN,
                    progress=False)
    full_state = _lora_state_from(full)
    part = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / "cut", LORA, privacy, TRAIN,
                    progress=False, stop_after=2)
    assert len(part.log) == 2 and (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / "cut", LORA, privacy,
                       TRAIN, progress=False)
    assert resumed.resumed_from_step == 2
    assert resumed.privacy.steps == full.privacy.steps
    assert resumed.privacy.epsilon_rdp == pytest.approx(full.privacy.epsilon_rdp)
    assert [r["loss"] for r in resumed.log] == pytest.approx([r["loss"] for r in full.log])
    for name, value in _lora_state_from(resumed).items():
        assert torch.allclose(value, full_state[name], atol=1e-6), name


def _lora_state_from(result) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(result.adapter_dir / "adapter_model.safetensors")


def test_epsilon_grows_with_steps_and_falls_with_noise():
    a = epsilon_for(1.0, 0.01, 100, 1e-5)
    assert epsilon_for(1.0, 0.01, 400, 1e-5) > a > epsilon_for(2.0, 0.01, 100, 1e-5)


@pytest.mark.parametrize("privacy, message", [
    (privacy_spec(epsilon=0.0), "epsilon must be > 0"),
    (privacy_spec(epsilon=-1.0), "epsilon must be > 0"),
    (privacy_spec(epsilon=1.0, delta=1 / 48), r"delta must be in \(0, 1/N\)"),
    (privacy_spec(epsilon=1.0, delta=0.0), r"delta must be in \(0, 1/N\)"),
    (privacy_spec(epsilon=1.0, max_grad_norm=0.0), "clipping norm must be > 0"),
])
def test_bad_privacy_parameters(byte_tokenizer, tmp_path, privacy, message):
    with pytest.raises(PrunePrivError, match=message):
        finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / "o", LORA, privacy, TRAIN,
                 progress=False)
    assert not (tmp_path / "o").exists()


def test_bad_targets_list_what_the_model_has():
    model = tiny_model("llama", layers=2)
    assert {"q_proj", "v_proj", "o_proj", "gate_proj"} <= set(linear_module_names(model))
    with pytest.raises(ModelError, match=r"\['query'\] not in the model; it has: .*q_proj"):
        add_lora(model, dataclasses.replace(LORA, target_modules=["query"]))


def test_training_set_smaller_than_a_batch(byte_tokenizer, tmp_path):
    with pytest.raises(PrunePrivError, match="fewer than one batch"):
        finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS[:5], tmp_path, LORA, privacy_spec(), TRAIN,
                 progress=False)


KILL_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_model
from conftest import make_byte_tokenizer
from test_finetune import TEXTS, LORA, TRAIN, privacy_spec
from prunepriv.privacy.train import finetune
import dataclasses, time
import prunepriv.privacy.train as ft
original = ft.sequence_nll
def slow(*a, **k):
    time.sleep(0.15)
    return original(*a, **k)
ft.sequence_nll = slow
train = dataclasses.replace(TRAIN, epochs=3.0)
finetune(tiny_model("llama", layers=2), make_byte_tokenizer(), TEXTS, {out!r}, LORA, privacy_spec(epsilon=8.0), train,
         progress=False)
"""


def test_killed_run_resumes_to_the_same_result(byte_tokenizer, tmp_path):
    """SIGKILL a training process after a checkpoint; the restarted run matches an uninterrupted one."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    train = dataclasses.replace(TRAIN, epochs=3.0)
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    checkpoint = out / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=False)["step"] >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    assert 3 <= killed_at < 12 and not (out / "privacy.json").exists()

    resumed = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, out, LORA, privacy_spec(epsilon=8.0),
                       train, progress=False)
    full = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / "full", LORA,
                    privacy_spec(epsilon=8.0), train, progress=False)
    assert resumed.resumed_from_step == killed_at
    assert resumed.privacy.steps == full.privacy.steps == 12
    assert resumed.privacy.epsilon_rdp == pytest.approx(full.privacy.epsilon_rdp)
    for name, value in _lora_state_from(resumed).items():
        assert torch.allclose(value, _lora_state_from(full)[name], atol=1e-6), name


def test_finished_run_is_reloaded_not_retrained(byte_tokenizer, tmp_path):
    privacy = privacy_spec(epsilon=8.0)
    first = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path, LORA, privacy, TRAIN,
                     progress=False)
    model = tiny_model("llama", layers=2)
    again = finetune(model, byte_tokenizer, TEXTS, tmp_path, LORA, privacy, TRAIN, progress=False)
    assert again.seconds == first.seconds and again.privacy == first.privacy
    trained = {n: p for n, p in again.model.named_parameters() if "lora_B" in n}
    assert all(p.abs().sum() > 0 for p in trained.values())


def test_adapter_for_another_model_is_refused(byte_tokenizer, tmp_path):
    import warnings

    from prunepriv import remove_layers
    from prunepriv.lm.lora import load_adapter

    result = finetune(tiny_model("llama", layers=3), byte_tokenizer, TEXTS, tmp_path, LORA, privacy_spec(), TRAIN,
                      progress=False)
    base = tiny_model("llama", layers=3)
    base.name_or_path = "elsewhere/model"         # loaded from another path than the adapter names: no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*base_model_name_or_path")
        loaded = load_adapter(base, result.adapter_dir)
    assert any("lora_A" in n for n, _ in loaded.named_parameters())
    with pytest.raises(ModelError, match="does not match the base model"):
        load_adapter(remove_layers(tiny_model("llama", layers=3), [1]), result.adapter_dir)
    with pytest.raises(ModelError, match="lacks"):
        load_adapter(tiny_model("gpt2", layers=3), result.adapter_dir)
    with pytest.raises(ModelError, match="no LoRA adapter"):
        load_adapter(tiny_model("llama", layers=3), tmp_path / "nowhere")
