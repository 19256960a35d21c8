"""DPIMP (Mireshghallah et al. 2022) adapted to LoRA: masks recomputed from the DP-trained
weights at each round, sparsity rising to the target, the deployed model exactly that sparse,
and the ε of the one DP-SGD run unchanged."""
from __future__ import annotations

import copy
import dataclasses
import json

import torch
from conftest import tiny_model

from prunepriv.compress import dpimp, sparsity
from prunepriv.lm.lora import add_lora
from prunepriv.privacy.specs import LoRASpec, PrivacySpec, TrainSpec
from prunepriv.privacy.train import finetune

TEXTS = [f"Patient {i} was seen in clinic and started on medication number {i % 7}." for i in range(48)]
LORA = LoRASpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
PRIVATE = PrivacySpec(epsilon=8.0, delta=None, max_grad_norm=1.0, noise_multiplier=None, accountant="rdp")
TRAIN = TrainSpec(epochs=2.0, learning_rate=1e-2, batch_size=8, physical_batch_size=4, max_length=32,
                  checkpoint_every=2, seed=0, noise="seeded")


def test_schedule_spaces_rounds_and_raises_sparsity_to_the_target():
    assert dpimp.schedule(12, 3, 0.5) == {3: 0.5 / 3, 6: 0.5 * 2 / 3, 9: 0.5}
    assert dpimp.schedule(2, 4, 0.5) == {1: 0.5}          # too few steps: the rounds collide, the last one wins


def test_folding_keeps_the_function_and_zeroes_lora_b():
    model = add_lora(tiny_model("llama", layers=2), LORA)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    ids = torch.tensor([[3, 7, 11, 19, 23]])
    before = model(input_ids=ids).logits
    dpimp.fold_lora(model)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-5)
    assert all(not layer.lora_B["default"].weight.any() for layer in dpimp.lora_layers(model))
    assert set(dpimp.base_linears(model)) == set(sparsity.prunable_linears(tiny_model("llama", layers=2)))


def test_dpimp_run_prunes_from_trained_weights_with_the_runs_epsilon(byte_tokenizer, tmp_path):
    dense = tiny_model("llama", layers=2)
    hook = dpimp.DPIMP(rounds=2, target=0.5)
    result = finetune(copy.deepcopy(dense), byte_tokenizer, TEXTS, tmp_path / "dpimp", LORA, PRIVATE, TRAIN,
                      progress=False, after_step=hook)
    plain = finetune(copy.deepcopy(dense), byte_tokenizer, TEXTS, tmp_path / "plain", LORA, PRIVATE, TRAIN,
                     progress=False)
    assert dataclasses.asdict(result.privacy) == dataclasses.asdict(plain.privacy)   # post-processing: same ε
    assert [round(h["sparsity"], 6) for h in hook.history] == [0.25, 0.5]
    assert all(abs(h["reached"] - h["sparsity"]) < 1e-3 for h in hook.history)
    assert not (tmp_path / "dpimp" / "checkpoint.pt").exists()
    deployed, reached = dpimp.deploy(result.model, 0.5)
    assert not dpimp.lora_layers(deployed) and abs(reached - 0.5) < 1e-3
    linears = sparsity.prunable_linears(deployed)
    for name, m in linears.items():
        assert int((m.weight == 0).sum()) == m.weight.numel() // 2, name
    # the masks come from the DP-trained weights, not from the dense ones
    one_shot = sparsity.magnitude_masks(dense, 0.5)
    assert any(not torch.equal(m.weight != 0, one_shot[name]) for name, m in linears.items() if "q_proj" in name)
    # and a DPIMP run is never reloaded as finished: it trains from the start again
    again = finetune(copy.deepcopy(dense), byte_tokenizer, TEXTS, tmp_path / "dpimp", LORA, PRIVATE, TRAIN,
                     progress=False, after_step=dpimp.DPIMP(rounds=2, target=0.5))
    assert again.resumed_from_step == 0 and len(again.log) == result.privacy.steps
    # nor is its folder taken for a finished plain run with the same settings
    digest = json.loads((tmp_path / "dpimp" / "run.json").read_text())["digest"]
    finetune(copy.deepcopy(dense), byte_tokenizer, TEXTS, tmp_path / "dpimp", LORA, PRIVATE, TRAIN, progress=False)
    assert json.loads((tmp_path / "dpimp" / "run.json").read_text())["digest"] != digest
