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


def test_paired_ratio_range_spans_the_repeats():
    from prunepriv.compress.latency import paired_ratio_range

    pruned, unpruned = [(1.0, 2.0), (3.0, 2.0), (2.0, 2.0)], [(2.0, 4.0), (2.0, 2.0), (2.0, 1.0)]
    assert paired_ratio_range(pruned, unpruned, 0) == [0.5, 1.5]
    assert paired_ratio_range(pruned, unpruned, 1) == [0.5, 2.0]


def test_bench_latency_reports_spread_machine_and_warns_when_busy(capsys, monkeypatch, tiny_model_dir):
    """The CLI reports the ratio's range over repeats, threads, load average and versions, and warns on
    stderr when the load average before the run says the machine was busy."""
    import json
    import os

    from prunepriv.cli import main

    argv = ["bench", "latency", "--model", str(tiny_model_dir), "--remove", "2", "--strategy", "last",
            "--set", "latency.prompt_length=16", "--set", "latency.new_tokens=4", "--set", "latency.repeats=3",
            "--set", "latency.warmup=1"]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.1, 0.2))
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    low, high = result["prefill_ratio_range"]
    assert low <= high and result["repeats"] == 3 and "warning" not in out.err
    assert result["machine"]["load_average"] == [0.0, 0.1, 0.2] and "torch" in result["machine"]["versions"]
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "(range " in out.out and "load average before 9.0/9.0/9.0" in out.out
    warnings = [line for line in out.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("prunepriv: warning: the machine was busy")
