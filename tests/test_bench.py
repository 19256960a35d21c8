"""Latency helpers on a tiny model (structure, not speed: timings are benchmarks)."""
from __future__ import annotations

from conftest import tiny_model

from prunepriv.compress.latency import latency_ratio


def test_latency_ratio_reports_measured_and_ideal():
    model = tiny_model("llama", layers=6)
    result = latency_ratio(model, [1, 2], prompt_length=16, new_tokens=4, repeats=2, warmup=1)
    assert result["layers"] == 6 and result["removed"] == 2
    assert result["ideal_ratio"] == 4 / 6
    assert result["prefill_ratio"] > 0 and result["decode_ratio"] > 0
    assert result["pruned"]["new_tokens"] == 4
    assert len(model.model.layers) == 6            # the unpruned model is left intact
