"""bf16 frozen weights: resolved where the hardware has it, LoRA and DP-SGD stay fp32, results agree with fp32."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from test_finetune import LORA, TEXTS, TRAIN, privacy_spec

from prunepriv.config import load_profile
from prunepriv.errors import ConfigError, PrunePrivError
from prunepriv.lm import precision as P
from prunepriv.lm.models import cast_weights
from prunepriv.privacy.throughput import throughput
from prunepriv.privacy.train import finetune


def test_auto_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert P.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert P.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert P.resolve_precision("auto", cpu) == "fp32"
    assert P.resolve_precision("bf16", cpu) == "bf16" and P.resolve_precision("fp32", cpu) == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        P.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_profile(None, {"precision": "half"})


def test_cast_keeps_buffers_and_tied_weights():
    model = cast_weights(tiny_model("llama", layers=2), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(b.dtype == torch.float32 for b in model.buffers() if b.is_floating_point())   # rotary inv_freq
    tied = tiny_model("gpt2", layers=2)
    cast_weights(tied, torch.bfloat16)
    assert tied.lm_head.weight is tied.transformer.wte.weight


@pytest.mark.parametrize("private", [True, False], ids=["dp", "non-private"])
def test_bf16_base_trains_fp32_lora_with_the_same_epsilon(byte_tokenizer, tmp_path, private):
    privacy = privacy_spec(epsilon=8.0) if private else privacy_spec()
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = cast_weights(tiny_model("llama", layers=2), dtype)
        runs[dtype] = finetune(model, byte_tokenizer, TEXTS, tmp_path / str(dtype), LORA, privacy, TRAIN,
                               progress=False)
    bf16, fp32 = runs[torch.bfloat16], runs[torch.float32]
    lora = {n: p for n, p in bf16.model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n and p.dtype == torch.float32 for n, p in lora.items())
    assert bf16.privacy == fp32.privacy                  # σ, q, steps, δ, ε: precision never enters the accounting
    first = [r["loss"] for r in fp32.log][0]
    assert abs(bf16.log[0]["loss"] - first) < 0.01 * first   # the same batches, rounding apart


def test_resumed_bf16_run_is_bit_identical(byte_tokenizer, tmp_path):
    from safetensors.torch import load_file

    privacy = privacy_spec(epsilon=8.0)

    def run(folder, **kw):
        model = cast_weights(tiny_model("llama", layers=2), torch.bfloat16)
        return finetune(model, byte_tokenizer, TEXTS, tmp_path / folder, LORA, privacy, TRAIN, progress=False, **kw)

    full = run("full")
    assert len(run("cut", stop_after=2).log) == 2
    resumed = run("cut")
    assert resumed.resumed_from_step == 2
    assert [r["loss"] for r in resumed.log] == [r["loss"] for r in full.log]
    a, b = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fp32_checkpoint_is_not_resumed_in_bf16(byte_tokenizer, tmp_path):
    """The precision is part of a run's digest: a half-done fp32 run is not continued in bf16."""
    privacy = privacy_spec(epsilon=8.0)
    model = tiny_model("llama", layers=2)
    finetune(model, byte_tokenizer, TEXTS, tmp_path, LORA, privacy, TRAIN, progress=False, stop_after=1)
    with pytest.raises(PrunePrivError, match="other settings"):
        finetune(cast_weights(tiny_model("llama", layers=2), torch.bfloat16), byte_tokenizer, TEXTS, tmp_path,
                 LORA, privacy, TRAIN, progress=False)


def test_throughput_reports_every_work_in_both_precisions(byte_tokenizer):
    texts = [f"record {i} of the throughput test, with some words" for i in range(4)]
    result = throughput(tiny_model("llama", layers=2), byte_tokenizer, texts, batch_size=4, max_length=24,
                        repeats=2, warmup=0)
    assert set(result["records_per_s"]) == {f"{w}/{p}" for w in ("eval_forward", "forward_backward", "non_private_step", "dp_sgd_step")
                                            for p in ("fp32", "bf16")}
    assert all(v > 0 for v in result["records_per_s"].values())
    assert result["ratios"]["dp_sgd_step_bf16_speedup"] > 0
    json.dumps(result)
