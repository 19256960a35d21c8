"""What a user hands in comes back unchanged: pruned models stored in their own dtype, any Unicode path,
bad input refused before the weights load (issue 30)."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, make_byte_tokenizer, tiny_model
from prunepriv.cli import main
from prunepriv.lm.models import decoder_layers

# an emoji (outside the Basic Multilingual Plane), a combining accent, right-to-left text and a space
ODD = "notes 🙂 e\u0301 שלום"


def _saved(path, family: str, dtype=torch.float32):
    model = tiny_model(family, layers=6).to(dtype)
    model.save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    return model


def _kept_layers_equal(source, pruned, removed: list[int]) -> None:
    kept = [i for i in range(len(decoder_layers(source))) if i not in removed]
    for new, old in enumerate(kept):
        a, b = decoder_layers(pruned)[new].state_dict(), decoder_layers(source)[old].state_dict()
        for name in a:
            assert a[name].dtype == b[name].dtype, name
            assert torch.equal(a[name], b[name]), (new, old, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_computation_never_changes_what_is_saved(tmp_path, family, capsys):
    source = _saved(tmp_path / "src", family)
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(tmp_path / "src"), "--output", str(out), "--remove", "2",
                 "--strategy", "last", "--precision", "bf16"]) == 0
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    _kept_layers_equal(source, pruned, [4, 5])
    assert torch.equal(pruned.get_input_embeddings().weight, source.get_input_embeddings().weight)
    card = (out / "README.md").read_text()
    assert "**Stored as:** fp32 (the base model's dtype)" in card and "bit-identical" in card
    capsys.readouterr()


def test_a_bf16_model_stays_bf16_and_another_dtype_is_asked_for(tmp_path, capsys):
    source = _saved(tmp_path / "src", "llama", torch.bfloat16)
    assert main(["prune", "--model", str(tmp_path / "src"), "--output", str(tmp_path / "same"),
                 "--layers", "1,3"]) == 0
    same = AutoModelForCausalLM.from_pretrained(tmp_path / "same", dtype="auto")
    assert next(same.parameters()).dtype == torch.bfloat16
    _kept_layers_equal(source, same, [1, 3])
    assert main(["prune", "--model", str(tmp_path / "src"), "--output", str(tmp_path / "half"),
                 "--layers", "1,3", "--save-dtype", "fp16"]) == 0
    config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert (config.get("dtype") or config.get("torch_dtype")) == "float16"
    assert "asked for; the base model's is bf16" in (tmp_path / "half" / "README.md").read_text()
    capsys.readouterr()


@pytest.fixture
def odd(tmp_path):
    """A folder whose name holds an emoji, a combining accent, right-to-left text and a space, with a tiny
    model and a data file inside."""
    root = tmp_path / ODD
    root.mkdir()
    _saved(root / f"model {ODD}", "llama")
    (root / f"data {ODD}.txt").write_text("\n\n".join(f"Patient note {i}: stable, reviewed in clinic." for i in range(60)))
    return root


def test_unicode_paths_in_every_subcommand(odd, capsys):
    model, data = str(odd / f"model {ODD}"), str(odd / f"data {ODD}.txt")
    small = ["--set", "data.n_patients=24", "--set", "finetune.eval_samples=4", "--set", "finetune.max_length=24",
             "--set", "finetune.physical_batch_size=4", "--set", "finetune.batch_size=8", "--set", "finetune.epochs=0.3"]
    runs = {
        "prune --data": ["prune", "--model", model, "--output", str(odd / f"pruned {ODD}"), "--remove", "1",
                         "--data", data, "--set", "similarity.n_samples=4", "--set", "similarity.max_length=16"],
        "finetune": ["finetune", "--model", model, "--data", data, "--output", str(odd / f"run {ODD}"),
                     "--batch-size", "8", "--physical-batch-size", "4", "--max-length", "16", "--epochs", "0.3",
                     "--epsilon", "inf"],
        "canaries": ["canaries", "--data", data, "--output", str(odd / f"with canaries {ODD}.jsonl"),
                     "--n-canaries", "2", "--canary-seed", "1"],
        "audit": ["audit", "--adapter", str(odd / f"run {ODD}" / "adapter"), "--model", model, "--profile", "smoke",
                  "--train", data, "--heldout", data, "--output", str(odd / f"audit {ODD}"),
                  "--set", "memorization.n_samples=2", "--set", "memorization.max_new_tokens=4",
                  "--set", "memorization.mia_samples=4", "--set", "memorization.n_candidates=4",
                  "--set", "memorization.prefix_records=2", "--set", "memorization.quality_references=4"],
        "tune": ["tune", "--model", model, "--profile", "smoke", "--output", str(odd / f"tuning {ODD}"),
                 "--grid", "learning_rate=0.01", "--seeds", "1", "--base", "unpruned", *small],
        "bench": ["bench", "latency", "--model", model, "--remove", "1", "--strategy", "last",
                  "--set", "latency.prompt_length=8", "--set", "latency.new_tokens=2", "--set", "latency.repeats=2"],
    }
    for name, argv in runs.items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, (name, err)
    assert (odd / f"pruned {ODD}" / "config.json").is_file()
    assert (odd / f"run {ODD}" / "adapter" / "adapter_model.safetensors").is_file()
    assert (odd / f"with canaries {ODD}.jsonl").is_file()
    assert any((odd / f"audit {ODD}").iterdir())
    assert (odd / f"tuning {ODD}" / "tuning.csv").is_file()
    code = main(["verify", "--profile", "smoke", "--output-root", str(odd)])        # nothing run there: one line
    assert code == 2 and ODD in capsys.readouterr().err


@pytest.mark.parametrize("argv, pattern", [
    (["prune", "--remove", "1", "--data", "{data}"], r"too few to split"),
    (["finetune", "--data", "{data}", "--batch-size", "8"], r"fewer than one batch"),
])
def test_too_little_data_is_refused_in_one_line_before_any_weights(tmp_path, tiny_model_dir, capsys, argv, pattern,
                                                                   monkeypatch):
    import prunepriv.commands.finetune as finetune_cmd
    import prunepriv.commands.prune as prune_cmd

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was refused")

    for module in (finetune_cmd, prune_cmd):
        monkeypatch.setattr(module, "load_model", refuse)
    data = tmp_path / "tiny.txt"
    data.write_text("one note\n\nanother note")                  # two records: no three-way split
    argv = [a.format(data=data) for a in argv] + ["--model", str(tiny_model_dir), "--output", str(tmp_path / "out")]
    capsys.readouterr()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and pattern.split()[0] in err[0], err
    assert seconds < 1.0, seconds
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
