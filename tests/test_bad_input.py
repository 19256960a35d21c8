"""Every subcommand over a table of bad inputs: one line on stderr, exit status 2,
nothing left behind, and no model weights loaded before the input is checked."""
from __future__ import annotations

import json
import re

import pytest

from prunepriv.cli import main


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any model's weights are loaded (a bad input must be refused first)."""
    import prunepriv.commands.audit as audit_cmd
    import prunepriv.commands.finetune as finetune_cmd
    import prunepriv.commands.prune as prune_cmd
    import prunepriv.commands.tune as tune_cmd

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was refused")

    for module in (audit_cmd, finetune_cmd, prune_cmd, tune_cmd):
        monkeypatch.setattr(module, "load_model", refuse)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _check(capsys, tmp_path, argv, pattern):
    before = _files(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert err[0].startswith("prunepriv: error: "), err
    assert re.search(pattern, err[0]), err[0]
    assert _files(tmp_path) == before, "the failed command left files behind"


def _data(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    (tmp_path / "notes.txt").write_text("\n\n".join(f"note {i}" for i in range(40)))
    (tmp_path / "file").write_text("x")


FINETUNE = ["finetune", "--data", "{tmp}/notes.txt", "--output", "{tmp}/run", "--model", "{model}"]
PRUNE = ["prune", "--output", "{tmp}/pruned", "--model", "{model}"]
TUNE = ["tune", "--output", "{tmp}/tuning", "--model", "{model}"]

CASES = [
    ("prune-not-utf8", PRUNE + ["--remove", "1", "--data", "{tmp}/latin1.csv"], r"latin1.csv:2: not UTF-8"),
    ("prune-fractional-layer", PRUNE + ["--layers", "1.5"], r"argument --layers: layers must be integers"),
    ("prune-unknown-flag", PRUNE + ["--remove", "1", "--colour", "red"], r"unrecognized arguments: --colour"),
    ("prune-output-under-file", ["prune", "--output", "{tmp}/file/pruned", "--model", "{model}", "--remove", "1"],
     r"cannot write to .*file/pruned"),
    ("prune-output-unwritable", ["prune", "--output", "/sys/prunepriv-test", "--model", "{model}", "--remove", "1"],
     r"cannot write to /sys/prunepriv-test"),
    ("prune-cuda-without-gpu", PRUNE + ["--remove", "1", "--device", "cuda"], r"no CUDA GPU is available"),
    ("prune-missing-model-folder", ["prune", "--output", "{tmp}/p", "--model", "{tmp}/nope", "--remove", "1"],
     r"model folder .*nope not found"),
    ("finetune-batch-0", FINETUNE + ["--batch-size", "0"], r"--batch-size must be >= 1"),
    ("finetune-physical-0", FINETUNE + ["--physical-batch-size", "0"], r"--physical-batch-size must be >= 1"),
    ("finetune-rank-0", FINETUNE + ["--lora-rank", "0"], r"--lora-rank must be >= 1"),
    ("finetune-length-0", FINETUNE + ["--max-length", "0"], r"--max-length must be >= 1"),
    ("finetune-epochs-0", FINETUNE + ["--epochs", "0"], r"epochs .* must be > 0"),
    ("finetune-not-utf8", ["finetune", "--data", "{tmp}/latin1.csv", "--output", "{tmp}/run", "--model", "{model}"],
     r"not UTF-8"),
    ("finetune-output-under-file", ["finetune", "--data", "{tmp}/notes.txt", "--output", "{tmp}/file/run",
                                    "--model", "{model}", "--batch-size", "10"], r"cannot write to"),
    ("finetune-name-dotdot", FINETUNE + ["--set", "name=.."], r"profile name must be"),
    ("finetune-bad-set", FINETUNE + ["--set", "finetune.nope=1"], r"unknown profile key 'finetune.nope'"),
    ("reproduce-without-profile", ["reproduce", "--output-root", "{tmp}"],
     r"reproduce needs --profile: full \((last run \d+ min|not run here yet)\), "
     r"paper \((last run \d+ min|not run here yet)\), smoke"),
    ("canaries-not-jsonl", ["canaries", "--data", "{tmp}/notes.txt", "--output", "{tmp}/out.csv"],
     r"--output must be a .jsonl file"),
    ("canaries-not-utf8", ["canaries", "--data", "{tmp}/latin1.csv", "--output", "{tmp}/out.jsonl"], r"not UTF-8"),
    ("bench-batch-0", ["bench", "dp-overhead", "--batch-size", "0", "--model", "{model}"], r"argument --batch-size: must be >= 1"),
    ("tune-grid-without-values", TUNE + ["--grid", "learning_rate"], r"argument --grid: wants KEY=V1,V2, got 'learning_rate'"),
    ("tune-untunable-key", TUNE + ["--grid", "sigma=1,2"], r"cannot tune sigma; tunable: learning_rate"),
    ("tune-learning-rate-0", TUNE + ["--grid", "learning_rate=0,0.01"], r"learning_rate must be > 0"),
    ("tune-batch-0", TUNE + ["--grid", "batch_size=0,8"], r"finetune.batch_size must be >= 1, got 0"),
    ("tune-infinite-epsilon", TUNE + ["--grid", "learning_rate=0.01", "--epsilon", "inf"],
     r"tune needs a finite target ε > 0, got inf"),
    ("tune-output-under-file", ["tune", "--output", "{tmp}/file/tuning", "--model", "{model}", "--set",
                                "finetune.epochs=0.1", "--grid", "learning_rate=0.01"], r"is not a folder"),
    ("bench-bad-choice", ["bench", "latency", "--remove", "1", "--strategy", "magic", "--model", "{model}"],
     r"unknown pruning strategy 'magic'|invalid choice: 'magic'"),
]


@pytest.mark.parametrize("name, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, tiny_model_dir, no_weights, name, argv, pattern):
    _data(tmp_path)
    argv = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in argv]
    _check(capsys, tmp_path, argv, pattern)


@pytest.mark.parametrize("content, pattern", [
    ('{"text": "ok"}\n{oops\n', r"samples.jsonl:2: malformed JSON"),
    ('{"body": "no text key"}\n', r"samples.jsonl:1: missing text field 'text'"),
])
def test_audit_bad_samples_file(capsys, tmp_path, tiny_model_dir, no_weights, content, pattern):
    from conftest import tiny_model
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "run" / "adapter"
    get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    (tmp_path / "samples.jsonl").write_text(content)
    _data(tmp_path)
    _check(capsys, tmp_path, ["audit", "--adapter", str(adapter), "--model", str(tiny_model_dir),
                              "--train", str(tmp_path / "notes.txt"), "--heldout", str(tmp_path / "notes.txt"),
                              "--samples", str(tmp_path / "samples.jsonl"), "--profile", "smoke"], pattern)


def test_audit_unwritable_output_fails_before_computing(capsys, tmp_path, tiny_model_dir, no_weights):
    from conftest import tiny_model
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "run" / "adapter"
    get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    _data(tmp_path)
    _check(capsys, tmp_path, ["audit", "--adapter", str(adapter), "--model", str(tiny_model_dir),
                              "--train", str(tmp_path / "notes.txt"), "--heldout", str(tmp_path / "notes.txt"),
                              "--profile", "smoke", "--output", str(tmp_path / "file" / "audit")],
           r"cannot write to")


@pytest.mark.parametrize("broken, pattern", [
    ("stages.json", r"stages.json is not valid JSON"),
    ("manifest.json", r"manifest.json is not valid JSON"),
])
def test_reproduce_corrupted_state_fails_before_running(capsys, tmp_path, tiny_model_dir, broken, pattern):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(f"name: tiny\nmodel: {tiny_model_dir}\n")
    results = tmp_path / "root" / "results" / "tiny"
    results.mkdir(parents=True)
    (results / broken).write_text("{not json")
    _check(capsys, tmp_path, ["reproduce", "--profile", str(profile), "--output-root", str(tmp_path / "root"),
                              "--stages", "01"], pattern)


def test_reproduce_unwritable_root(capsys, tmp_path, tiny_model_dir):
    profile = tmp_path / "tiny.yaml"
    profile.write_text(f"name: tiny\nmodel: {tiny_model_dir}\n")
    (tmp_path / "file").write_text("x")
    _check(capsys, tmp_path, ["reproduce", "--profile", str(profile), "--output-root", str(tmp_path / "file"),
                              "--stages", "01"], r"cannot write to")


def test_verify_corrupted_reference(capsys, tmp_path):
    results = tmp_path / "results" / "smoke"
    (results / "reference").mkdir(parents=True)
    (results / "manifest.json").write_text(json.dumps({"artifacts": {}}))
    (results / "reference" / "manifest.json").write_text("{broken")
    _check(capsys, tmp_path, ["verify", "--profile", "smoke", "--output-root", str(tmp_path)], r"not valid JSON")
    (results / "reference" / "manifest.json").write_text(json.dumps({"artifacts": {}}))
    (results / "reference" / "layer_similarity.csv").write_text("garbage\n\"unclosed")
    _check(capsys, tmp_path, ["verify", "--profile", "smoke", "--output-root", str(tmp_path)],
           r"reference tables in .* are damaged|layer_similarity.csv")


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"prunepriv {version('prunepriv')}"


def test_hub_id_without_network_is_one_line_at_once(capsys, tmp_path, monkeypatch):
    """Issue 16: no transformers retries (about 30 s, a dozen lines) when the hub cannot be reached."""
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    _check(capsys, tmp_path, ["prune", "--model", "someone/not-cached-model", "--layers", "2",
                              "--output", str(tmp_path / "out")], r"hub is unreachable .*not in the local cache")
    assert time.perf_counter() - start < 10


def test_hub_reachability_and_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from prunepriv.errors import ModelError
    from prunepriv.lm import models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")              # nothing listens on port 9
    assert not models.hub_reachable(timeout=1.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not models.hub_reachable()
    # a model in the cache (the layout huggingface_hub writes) is found without the network
    snapshot = tmp_path / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert models.resolve_model_path("org/cached") == str(snapshot)
    with pytest.raises(ModelError, match="not in the local cache"):
        models.resolve_model_path("org/missing")
