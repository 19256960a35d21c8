"""Sensitivity end to end: for neighbouring datasets (one record added to a logical batch),
the noiseless sum of clipped per-sample gradients that DP-SGD adds its noise to differs by
at most the clipping norm C. Measured on the trainer's own path — records tokenized and
length-sorted as in training, split into physical batches by Opacus's BatchMemoryManager,
the per-record loss, Opacus's clipping — in Opacus's hooks and functorch modes, with an
fp32 and a bf16 base model, and across two processes under torchrun (the sum over ranks).

The added record is long nonsense whose raw gradient is far above C; the same measurement
with clipping lifted shows a difference far above C, so the bound is not met by accident."""
from __future__ import annotations

import functools
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import opacus
import pytest
import torch

from prunepriv.lm.lora import add_lora
from prunepriv.lm.models import cast_weights
from prunepriv.privacy.batching import (
    LengthSortedBatches,
    RankShare,
    TokenizedTexts,
    make_collate,
)
from prunepriv.privacy.specs import LoRASpec, PrivacySpec, TrainSpec
from prunepriv.privacy.train import plan_run, prepare_trainer, private_loop
from prunepriv.progress import tqdm

C = 0.05
# In fp32 the bound holds to float precision. In bf16 a record's gradient also depends, through
# rounding, on the padded length of the physical batch it lands in (the added record lengthens
# one of them): measured 6.8e-4·C here, a sensitivity of C·(1 + 7e-4), i.e. σ effectively
# 0.07% smaller than the accountant assumes. README "Privacy notes" states it.
ROUNDING = {torch.float32: 1e-5, torch.bfloat16: 2e-3}
TEXTS = [f"note {i}: the patient{' is' * (i % 4)} well" for i in range(16)]
ADDED = "zq xv " * 12 + "MRN-998877 qqq jjj"          # the neighbour's extra record: long and unlike the rest
BATCH = [1, 3, 4, 6, 9, 12, 14]                         # a logical batch of D; D' adds the record ADDED (index 16)
LORA = LoRASpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
TRAIN = TrainSpec(epochs=1.0, learning_rate=1e-3, batch_size=8, physical_batch_size=3, max_length=48,
                  checkpoint_every=1000, seed=0, noise="seeded")


def privacy(clip: float) -> PrivacySpec:
    """DP-SGD with clipping norm ``clip`` (σ is fixed; the sum is read before the noise is added)."""
    return PrivacySpec(epsilon=math.inf, delta=None, max_grad_norm=clip, noise_multiplier=1.0, accountant="rdp")


def clipped_sum(model_factory, tokenizer, indices: list[int], clip: float, out: Path,
                loss=None) -> dict[str, torch.Tensor]:
    """The clipped per-sample gradient sum of one logical batch ``indices`` of TEXTS + [ADDED], as the
    trainer forms it just before adding noise (summed over the ranks under torchrun); ``loss``
    replaces the per-record NLL as :func:`prunepriv.privacy.train.finetune` would."""
    texts = TEXTS + [ADDED]
    model = model_factory()
    plan = plan_run(model, texts, out, LORA, privacy(clip), TRAIN)
    peft_model = add_lora(model, LORA)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():                               # non-zero LoRA weights: every LoRA matrix gets gradient
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    t = prepare_trainer(peft_model, privacy(clip), TRAIN, plan)
    t.bar = tqdm(disable=True)
    if loss is not None:
        t.loss = loss
    captured: dict[str, torch.Tensor] = {}
    add_noise = t.optimizer.add_noise

    def capture() -> None:
        captured.update({name: p.summed_grad.detach().float().clone() for name, p in t.params.items()})
        add_noise()

    t.optimizer.add_noise = capture
    dataset = TokenizedTexts(tokenizer, texts, TRAIN.max_length)
    batches = LengthSortedBatches([indices], [len(x) for x in dataset.items])
    if plan.distributed:
        batches = RankShare(batches, plan.rank, plan.world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=make_collate(dataset.pad_id))
    private_loop(t, loader, stop_after=None)
    if plan.distributed:
        for value in captured.values():
            torch.distributed.all_reduce(value)
    return captured


def difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def neighbour_differences(model_factory, tokenizer, out: Path, loss=None) -> tuple[float, float]:
    """``(clipped, unclipped)``: the difference of the two neighbours' sums at C and with clipping lifted."""
    clipped = difference(clipped_sum(model_factory, tokenizer, BATCH + [16], C, out / "a", loss),
                         clipped_sum(model_factory, tokenizer, BATCH, C, out / "b", loss))
    raw = difference(clipped_sum(model_factory, tokenizer, BATCH + [16], 1e9, out / "c", loss),
                     clipped_sum(model_factory, tokenizer, BATCH, 1e9, out / "d", loss))
    return clipped, raw


def _factory(dtype: torch.dtype):
    from conftest import tiny_model

    def make():
        torch.manual_seed(0)
        return cast_weights(tiny_model("llama", layers=2), dtype)
    return make


@pytest.mark.parametrize("functorch", [False, True], ids=["hooks", "functorch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_one_record_moves_the_clipped_sum_by_at_most_C(byte_tokenizer, tmp_path, monkeypatch, functorch, dtype):
    if functorch:
        monkeypatch.setattr(opacus, "GradSampleModule",
                            functools.partial(opacus.GradSampleModule, force_functorch=True))
    clipped, raw = neighbour_differences(_factory(dtype), byte_tokenizer, tmp_path)
    assert clipped <= C * (1 + ROUNDING[dtype]), clipped
    assert clipped > 0.5 * C                           # the added record's gradient is clipped to about C
    assert raw > 5 * C, raw                            # without clipping the neighbours differ far more


def test_the_bound_holds_for_the_distillation_loss(byte_tokenizer, tmp_path):
    """DPKD's student loss (prunepriv.compress.distill) reads a teacher's logits of each record: the
    teacher sees only that record, so one added record still moves the clipped sum by at most C."""
    from conftest import tiny_model

    from prunepriv.compress.distill import Distillation

    torch.manual_seed(1)
    teacher = Distillation(tiny_model("llama", layers=2).eval(), alpha=0.7, temperature=2.0)
    clipped, raw = neighbour_differences(_factory(torch.float32), byte_tokenizer, tmp_path, teacher)
    assert 0.5 * C < clipped <= C * (1 + ROUNDING[torch.float32]), clipped
    assert raw > 5 * C, raw


# Runs on each of two ranks under torchrun: the same measurement, summed over the ranks.
WORKER = r"""
import json, sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from conftest import make_byte_tokenizer
import test_sensitivity as s

dist.init_process_group("gloo")
out = Path(sys.argv[2])
clipped, raw = s.neighbour_differences(s._factory(torch.float32), make_byte_tokenizer(), out / f"rank{dist.get_rank()}")
if dist.get_rank() == 0:
    (out / "result.json").write_text(json.dumps({"clipped": clipped, "raw": raw}))
dist.destroy_process_group()
"""


def test_the_bound_holds_across_two_processes(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(tmp_path / "worker.py"), str(Path(__file__).parent), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["clipped"] <= C * (1 + ROUNDING[torch.float32]) and result["clipped"] > 0.5 * C, result
    assert result["raw"] > 5 * C, result
