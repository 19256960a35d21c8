"""Secure noise by default: a run that does not ask for seeded noise draws its DP noise and
its Poisson batches from the operating system, never saves those generators, and says so
in its privacy record; the research profiles stay reproducible from their seed."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file

import prunepriv.privacy.train as train_module
from prunepriv.cli import main
from prunepriv.config import Profile, load_profile
from prunepriv.errors import PrivacyConfigError
from prunepriv.privacy.noise import (
    SECURE_NOTE,
    noise_note,
    numpy_generator,
    torch_generator,
)
from prunepriv.privacy.specs import LoRASpec, PrivacySpec, TrainSpec
from prunepriv.privacy.train import finetune

TEXTS = [f"Patient {i} was seen in clinic and started on medication number {i % 7}." for i in range(48)]
LORA = LoRASpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
PRIVATE = PrivacySpec(epsilon=8.0, delta=None, max_grad_norm=1.0, noise_multiplier=None, accountant="rdp")
SECURE = TrainSpec(epochs=1.0, learning_rate=1e-2, batch_size=12, physical_batch_size=5, max_length=32,
                   checkpoint_every=1, seed=0, noise="secure")


def _cli_run(tmp_path, model_dir, name: str, *extra: str) -> tuple[dict, dict[str, torch.Tensor], str]:
    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(f"note {i}: the patient is well, MRN-{1000 + i}" for i in range(40)))
    out = tmp_path / name
    assert main(["finetune", "--model", str(model_dir), "--data", str(data), "--output", str(out), "--seed", "0",
                 "--epsilon", "4", "--batch-size", "10", "--physical-batch-size", "5", "--max-length", "24",
                 "--epochs", "1", "--target-modules", "q_proj,v_proj", *extra]) == 0
    record = json.loads((out / "privacy.json").read_text())
    return record, load_file(out / "adapter" / "adapter_model.safetensors"), (out / "adapter" / "README.md").read_text()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_cli_runs_with_the_same_seed_get_different_noise(tmp_path, tiny_model_dir):
    first, weights1, card = _cli_run(tmp_path, tiny_model_dir, "a")
    second, weights2, _ = _cli_run(tmp_path, tiny_model_dir, "b")
    assert first["noise"] == second["noise"] == SECURE_NOTE
    assert "Randomness:** secure" in card
    assert not _same(weights1, weights2)
    # the same two runs asked for seeded noise: identical, and the record says why that is weak
    seeded1, weights3, card3 = _cli_run(tmp_path, tiny_model_dir, "c", "--noise", "seeded")
    seeded2, weights4, _ = _cli_run(tmp_path, tiny_model_dir, "d", "--noise", "seeded")
    assert _same(weights3, weights4) and not _same(weights1, weights3)
    assert seeded1 == seeded2 and seeded1["noise"].startswith("seeded from seed 0 (research setting)")
    assert "the stated epsilon does not hold against them" in card3
    assert first["epsilon_rdp"] == seeded1["epsilon_rdp"]                # the accounting does not change


def test_research_profiles_are_seeded_and_everything_else_secure(tmp_path):
    assert Profile().noise == "secure"
    for name in ("paper", "smoke", "full"):
        assert load_profile(name).noise == "seeded", name
    user = tmp_path / "mine.yaml"
    user.write_text("name: mine\nfinetune:\n  epsilons: [3.0]\n")
    assert load_profile(str(user)).noise == "secure"
    with pytest.raises(Exception, match="noise must be one of secure, seeded"):
        load_profile(None, {"noise": "fixed"})


def test_profile_run_is_reproducible(byte_tokenizer, tmp_path):
    seeded = dataclasses.replace(SECURE, noise="seeded")
    runs = [finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path / f"run{i}", LORA, PRIVATE,
                     seeded, progress=False) for i in range(2)]
    assert runs[0].log == runs[1].log
    states = [{n: p.detach() for n, p in r.model.named_parameters() if "lora_" in n} for r in runs]
    assert _same(*states)


def test_secure_run_saves_no_generator_and_resumes_with_fresh_ones(byte_tokenizer, tmp_path, monkeypatch):
    modes = []
    wrap = train_module.wrap_private

    def spy(*args, **kwargs):
        net, optimizer = wrap(*args, **kwargs)
        modes.append(optimizer.secure_mode)
        return net, optimizer

    monkeypatch.setattr(train_module, "wrap_private", spy)
    part = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path, LORA, PRIVATE, SECURE,
                    progress=False, stop_after=2)
    assert len(part.log) == 2
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["rng"]
    assert saved["sampler"] is None and saved["noise"] is None and saved["torch"] is not None
    done = finetune(tiny_model("llama", layers=2), byte_tokenizer, TEXTS, tmp_path, LORA, PRIVATE, SECURE,
                    progress=False)
    assert done.resumed_from_step == 2 and done.privacy.steps == math.ceil(1 / (12 / 48))
    assert done.privacy.noise == SECURE_NOTE
    assert modes == [True, True]                                         # Opacus's secure_mode sampling


def test_generators():
    assert torch.equal(torch.randn(4, generator=torch_generator("seeded", 7)),
                       torch.randn(4, generator=torch_generator("seeded", 7)))
    assert not torch.equal(torch.randn(4, generator=torch_generator("secure", 7)),
                           torch.randn(4, generator=torch_generator("secure", 7)))
    assert numpy_generator("seeded", 0, 3).normal() == numpy_generator("seeded", 0, 3).normal()
    assert numpy_generator("secure", 0, 3).normal() != numpy_generator("secure", 0, 3).normal()
    assert noise_note("seeded", 5).startswith("seeded from seed 5")
    with pytest.raises(PrivacyConfigError, match="noise must be one of"):
        torch_generator("fixed", 0)
