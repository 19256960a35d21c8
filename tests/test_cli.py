"""Command line: bad input gives one line on stderr and exit status 2,
and leaves nothing behind; good input produces a loadable pruned model."""
from __future__ import annotations

import argparse

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunepriv.cli import main


def _run(capsys, argv):
    capsys.readouterr()                                  # drop what fixtures printed
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _one_line_error(code, err, pattern):
    import re

    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("prunepriv: error: ")
    assert re.search(pattern, err[0]), err[0]


@pytest.mark.parametrize("extra, pattern", [
    (["--remove", "6"], "cannot remove 6 layers: the model has 6"),
    (["--remove", "9"], "cannot remove 9 layers"),
    (["--layers", "1,6"], r"layer index 6 out of range: the model has layers 0\.\.5"),
    (["--remove", "2", "--strategy", "magic"], "unknown pruning strategy 'magic'"),
    (["--remove", "2", "--data", "missing.jsonl"], "data file not found: missing.jsonl"),
])
def test_prune_bad_input(capsys, tmp_path, tiny_model_dir, extra, pattern):
    out = tmp_path / "out"
    code, err = _run(capsys, ["prune", "--model", str(tiny_model_dir), "--output", str(out), *extra])
    _one_line_error(code, err, pattern)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_prune_malformed_data_names_the_line(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "notes.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "fine"}\nnot json\n')
    code, err = _run(capsys, ["prune", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"),
                              "--remove", "1", "--data", str(data)])
    _one_line_error(code, err, r"notes.jsonl:3: malformed JSON")


def test_unsupported_architecture(capsys, tmp_path):
    import transformers as T

    path = tmp_path / "phi"
    T.AutoModelForCausalLM.from_config(T.PhiConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4)).save_pretrained(path)
    code, err = _run(capsys, ["prune", "--model", str(path), "--output", str(tmp_path / "o"), "--remove", "1"])
    _one_line_error(code, err, "unsupported architecture 'phi'; supported families: llama")


def test_missing_model_folder(capsys, tmp_path):
    code, err = _run(capsys, ["prune", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o"),
                              "--remove", "1"])
    _one_line_error(code, err, r"model folder .*nope not found \(give a local Hugging Face folder")


@pytest.mark.parametrize("profile_text, pattern", [
    (None, "unknown profile 'nosuch'"),
    ("name: bad\nsimilarity:\n  n_sampels: 3\n", "unknown profile key 'similarity.n_sampels'"),
    ("name: bad\npruning:\n  strategies: [cosine, nope]\n", "unknown pruning strategy 'nope'"),
])
def test_reproduce_bad_profile(capsys, tmp_path, profile_text, pattern):
    profile = "nosuch"
    if profile_text:
        profile = str(tmp_path / "bad.yaml")
        (tmp_path / "bad.yaml").write_text(profile_text)
    code, err = _run(capsys, ["reproduce", "--profile", profile, "--output-root", str(tmp_path / "root")])
    _one_line_error(code, err, pattern)
    assert not (tmp_path / "root").exists()


def test_reproduce_refuses_removing_every_layer(capsys, tmp_path, tiny_model_dir):
    profile = tmp_path / "p.yaml"
    profile.write_text(f"name: tiny\nmodel: {tiny_model_dir}\npruning:\n  remove: [0, 6]\n")
    code, err = _run(capsys, ["reproduce", "--profile", str(profile), "--output-root", str(tmp_path / "root")])
    _one_line_error(code, err, "cannot remove 6 layers")
    assert not (tmp_path / "root").exists()


def test_prune_saves_a_model_that_reloads(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_model_dir), "--output", str(out), "--remove", "2",
                 "--strategy", "cosine", "--n-samples", "4", "--max-length", "32"])
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    assert len(model.config.prunepriv_kept_layers) == 4
    card = (out / "README.md").read_text()
    assert "`cosine` on calibration text" in card
    assert "layer choice (cosine) on 4 records of general English passages (public) — public" in card
    assert model.config.prunepriv_data_uses == [{"purpose": "layer choice (cosine)", "records": 4, "private": False,
                                                 "data": "general English passages (public)", "epsilon": None}]
    assert f'from_pretrained("{out.resolve()}")' in card
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 260)
    assert (out / "tokenizer.json").is_file()


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunepriv.cli", "reproduce", "--profile", "nosuch"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown profile 'nosuch'" in proc.stderr


@pytest.mark.parametrize("extra, pattern", [
    (["--epsilon", "0"], r"argument --epsilon: must be > 0 \(inf for a non-private run\), got 0"),
    (["--epsilon", "-2"], r"argument --epsilon: must be > 0 .*got -2"),
    (["--delta", "0.5"], r"delta must be in \(0, 1/N\) = \(0, 0.0\d+\) for N = \d+ training records, got 0.5"),
    (["--max-grad-norm", "0"], "--max-grad-norm must be > 0"),
    (["--target-modules", "query,value"], r"LoRA target modules \['query', 'value'\] not in the model; it has: .*q_proj"),
    (["--batch-size", "100000"], "fewer than one batch"),
])
def test_finetune_bad_input(capsys, tmp_path, tiny_model_dir, extra, pattern):
    out = tmp_path / "run"
    code, err = _run(capsys, ["finetune", "--model", str(tiny_model_dir), "--data", "synthetic", "--output", str(out),
                              "--max-length", "32", *extra])
    _one_line_error(code, err, pattern)
    assert not out.exists()


def test_finetune_cli_writes_adapter_and_privacy_record(capsys, tmp_path, tiny_model_dir):
    import json
    import os
    import stat

    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(f"note {i}: the patient is well" for i in range(40)))
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        code = main(["finetune", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                     "--epsilon", "4", "--batch-size", "10", "--physical-batch-size", "4", "--max-length", "24",
                     "--merge"])
    finally:
        os.umask(old)
    assert code == 0
    # weights others can load (safetensors alone writes them 0600)
    for folder in (out / "adapter", out / "merged"):
        assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}, folder
    record = json.loads((out / "privacy.json").read_text())
    assert record["private"] and record["epsilon_rdp"] <= 4.05 and record["n_train"] == 40
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.config.num_hidden_layers == 6
    # the guarantee travels with the weights: privacy.json and a model card inside adapter/
    assert json.loads((out / "adapter" / "privacy.json").read_text()) == record
    card = (out / "adapter" / "README.md").read_text()
    assert "library_name: peft" in card and f"base_model: {tiny_model_dir.resolve()}" in card
    assert f"(ε = {record['epsilon_rdp']:.3f}, δ = {record['delta']:.2e})" in card and "Unit of privacy" in card
    assert "Earlier use of data:** none recorded on the base model" in card
    assert record["data_uses"] == [{"purpose": "LoRA fine-tuning (DP-SGD)", "data": "training records (private)",
                                    "records": 40, "private": True, "epsilon": record["epsilon_rdp"]}]


def test_adapter_loads_from_another_folder_with_auto_peft(tmp_path, tiny_model_dir, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(f"note {i}" for i in range(20)))
    monkeypatch.chdir(tiny_model_dir.parent)                 # a relative --model, as users type it
    assert main(["finetune", "--model", tiny_model_dir.name, "--data", str(data), "--output", str(tmp_path / "run"),
                 "--epsilon", "inf", "--batch-size", "10", "--max-length", "16"]) == 0
    monkeypatch.chdir("/")
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run" / "adapter")
    assert model.get_base_model().config.num_hidden_layers == 6


def test_saved_models_are_readable_as_the_umask_allows(tmp_path, tiny_model_dir):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["prune", "--model", str(tiny_model_dir), "--output", str(tmp_path / "pruned"),
                     "--layers", "1,2"]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "pruned"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    card = (out / "README.md").read_text()
    assert "Removed layers:** 1, 2 (2 of 6" in card and "the user (explicit indices)" in card
    assert "Calibration data:** none" in card


@pytest.fixture(scope="module")
def audit_model_dir(tmp_path_factory):
    from conftest import make_byte_tokenizer, tiny_model

    path = tmp_path_factory.mktemp("audit") / "tiny-llama"
    tiny_model("llama", layers=6).save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, audit_model_dir):
    """A DP adapter for the tiny model trained on a user's notes, and the notes' held-out twin."""
    tmp_path, tiny_model_dir = tmp_path_factory.mktemp("adapter"), audit_model_dir
    train, heldout = tmp_path / "train.txt", tmp_path / "heldout.txt"
    train.write_text("\n\n".join(f"note {i}: Mr Smith {i} is well, MRN-{1000 + i}" for i in range(40)))
    heldout.write_text("\n\n".join(f"note {i}: Ms Jones {i} is unwell, MRN-{5000 + i}" for i in range(20)))
    out = tmp_path / "run"
    assert main(["finetune", "--model", str(tiny_model_dir), "--data", str(train), "--output", str(out),
                 "--epsilon", "4", "--batch-size", "10", "--physical-batch-size", "4", "--max-length", "24"]) == 0
    return out / "adapter", train, heldout


def test_audit_cli_reports_each_measurement_beside_its_control(capsys, tmp_path, audit_model_dir, tiny_adapter):
    tiny_model_dir = audit_model_dir
    import json

    adapter, train, heldout = tiny_adapter
    capsys.readouterr()
    code = main(["audit", "--adapter", str(adapter), "--model", str(tiny_model_dir), "--train", str(train),
                 "--heldout", str(heldout), "--profile", "smoke", "--output", str(tmp_path / "audit")])
    out = capsys.readouterr().out
    assert code == 0
    assert "membership inference AUC (loss)" in out and "prefix attack: token match rate" in out
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert {m["attack"] for m in report["mia"]} == {"loss", "zlib", "min_k", "reference"}
    assert report["provenance"]["profile"] == "smoke"


@pytest.mark.parametrize("case, pattern", [
    ("missing-adapter", "no LoRA adapter in"),
    ("other-layers", "does not match the base model"),
    ("other-width", r"shapes differ: .*lora_A.* is \(2, 64\) in the adapter, \(2, 32\) in the base model"),
    ("tokenizer", "tokenizer has 270 tokens but the model embeds only 260"),
    ("empty-samples", "holds no generated text"),
    ("no-heldout", "--train and --heldout go together"),
])
def test_audit_bad_input(capsys, tmp_path, audit_model_dir, tiny_adapter, case, pattern):
    tiny_model_dir = audit_model_dir
    adapter, train, heldout = tiny_adapter
    argv = ["audit", "--adapter", str(adapter), "--model", str(tiny_model_dir), "--train", str(train),
            "--heldout", str(heldout), "--profile", "smoke", "--output", str(tmp_path / "audit")]
    if case == "missing-adapter":
        argv[2] = str(tmp_path / "nowhere")
    elif case == "other-layers":
        argv += ["--layers", "4,5"]
    elif case == "other-width":
        import transformers as T
        from peft import LoraConfig, get_peft_model

        wide = T.LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=64, num_hidden_layers=6,
                             num_attention_heads=4, num_key_value_heads=2)
        get_peft_model(T.AutoModelForCausalLM.from_config(wide), LoraConfig(r=2, target_modules=["q_proj"])
                       ).save_pretrained(tmp_path / "wide")
        argv[2] = str(tmp_path / "wide")
    elif case == "tokenizer":
        from conftest import make_byte_tokenizer

        tok = make_byte_tokenizer()
        tok.add_tokens([f"<extra{i}>" for i in range(12)])
        tok.save_pretrained(tmp_path / "tok")
        argv += ["--tokenizer", str(tmp_path / "tok")]
    elif case == "empty-samples":
        (tmp_path / "samples.jsonl").write_text("\n")
        argv += ["--samples", str(tmp_path / "samples.jsonl")]
    elif case == "no-heldout":
        argv = argv[:6] + argv[8:]
    code, err = _run(capsys, argv)
    _one_line_error(code, err, pattern)
    assert not (tmp_path / "audit").exists()


def test_canaries_make_exposure_and_the_one_run_audit_work_on_user_data(capsys, tmp_path, audit_model_dir):
    import json
    import re

    notes = tmp_path / "notes.csv"
    notes.write_text("text\n" + "".join(f'"note {i}:\nMr Smith {i} is well"\n' for i in range(40)), encoding="utf-8")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n\n".join(f"note {i}: Ms Jones {i} is unwell" for i in range(20)))
    mixed = tmp_path / "notes+canaries.jsonl"
    assert main(["canaries", "--data", str(notes), "--output", str(mixed), "--n-canaries", "2",
                 "--canary-repetitions", "2", "--n-heldout-canaries", "2", "--n-audit-canaries", "4"]) == 0
    secrets_file = tmp_path / "notes+canaries.canaries.json"
    listed = json.loads(secrets_file.read_text())
    texts = [json.loads(line)["text"] for line in mixed.read_text(encoding="utf-8").splitlines()]
    assert sorted(t for t in texts if t.startswith("note")) == sorted(f"note {i}:\nMr Smith {i} is well"
                                                                      for i in range(40))   # user text unchanged
    trained = [c for c in listed["canaries"] if c["repetitions"] > 0]
    assert len(texts) == 40 + sum(c["repetitions"] for c in trained)
    assert not any(c["prefix"] + c["secret"] in "\n".join(texts) for c in listed["canaries"] if not c["repetitions"])

    run = tmp_path / "run"
    assert main(["finetune", "--model", str(audit_model_dir), "--data", str(mixed), "--output", str(run),
                 "--epsilon", "8", "--batch-size", "10", "--physical-batch-size", "5", "--max-length", "24"]) == 0
    capsys.readouterr()
    code = main(["audit", "--adapter", str(run / "adapter"), "--model", str(audit_model_dir), "--train", str(mixed),
                 "--heldout", str(heldout), "--canaries", str(secrets_file), "--profile", "smoke",
                 "--n-samples", "4", "--max-new-tokens", "8", "--n-candidates", "8", "--mia-samples", "8",
                 "--prefix-records", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "canary exposure (bits, mean)" in out and "audit: ε lower bound" in out
    assert re.search(r"PII values written verbatim \(fraction\) +skipped +the records carry no PII", out)
    report = json.loads((run / "audit" / "report.json").read_text())
    assert len(report["exposure"]) == 4 and report["audit"]["epsilon_rdp"] > 0
    assert report["target_epsilon"] == pytest.approx(json.loads((run / "privacy.json").read_text())["epsilon_rdp"])
    assert "NaN" not in (run / "audit" / "report.json").read_text()


def test_model_cards_name_the_embedded_model_by_its_hub_id(tmp_path):
    from prunepriv.cards import base_reference, write_pruned_card
    from prunepriv.privacy.uses import DataUse

    assert base_reference("embedded") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_reference(str(tmp_path)) == str(tmp_path.resolve())
    assert base_reference("") == ""                           # built from a config: not the working folder
    use = DataUse("layer choice (cosine)", "the calibration split of notes.csv (private)", 40, private=True)
    card = write_pruned_card(tmp_path, "embedded", [20, 21], 30, "cosine", use).read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Q4_1 GGUF" in card
    assert ("layer choice (cosine) on 40 records of the calibration split of notes.csv (private) — private, "
            "not differentially private: no ε covers it") in card


def test_every_use_of_private_data_reaches_the_privacy_record(capsys, tmp_path, tiny_model_dir):
    """Layers chosen on the user's text are a private use that DP-SGD's ε does not cover: the pruned
    model carries it, and the adapter's privacy record and card name it; public calibration does not."""
    import json

    data = tmp_path / "notes.txt"
    data.write_text("\n\n".join(f"note {i}: the patient is well, MRN-{1000 + i}" for i in range(60)))
    records = {}
    for calibration in ("private", "public"):
        pruned, run = tmp_path / f"pruned-{calibration}", tmp_path / f"run-{calibration}"
        extra = ["--data", str(data)] if calibration == "private" else []
        assert main(["prune", "--model", str(tiny_model_dir), "--output", str(pruned), "--remove", "2",
                     "--n-samples", "6", "--max-length", "24", *extra]) == 0
        assert main(["finetune", "--model", str(pruned), "--data", str(data), "--output", str(run), "--epsilon", "4",
                     "--batch-size", "12", "--physical-batch-size", "6", "--max-length", "24", "--epochs", "0.5",
                     "--target-modules", "q_proj,v_proj"]) == 0
        records[calibration] = (json.loads((run / "privacy.json").read_text()),
                                (run / "adapter" / "README.md").read_text())
    private, card = records["private"]
    assert [u["purpose"] for u in private["data_uses"]] == ["layer choice (cosine)", "LoRA fine-tuning (DP-SGD)"]
    first = private["data_uses"][0]
    assert first["private"] and first["epsilon"] is None and "notes.txt" in first["data"] and first["records"] == 6
    assert "Not covered: 1 earlier private use(s)" in card and "no ε covers it" in card
    public, card = records["public"]
    assert public["data_uses"][0] == {"purpose": "layer choice (cosine)", "data": "general English passages (public)",
                                      "records": 6, "private": False, "epsilon": None}
    assert "Every recorded earlier use of data is public or differentially private" in card


def test_own_warnings_are_one_line_others_as_python_prints_them():
    import warnings

    import prunepriv.stages.experiments as experiments
    from prunepriv.cli import warning_line

    own = warning_line(UserWarning("only 6 calibration records available (asked for 16)"), UserWarning,
                       experiments.__file__, 61)
    assert own == "prunepriv: warning: only 6 calibration records available (asked for 16)\n"
    other = warning_line(UserWarning("from a library"), UserWarning, warnings.__file__, 1)
    assert other == warnings.formatwarning(UserWarning("from a library"), UserWarning, warnings.__file__, 1)
    assert "UserWarning" in other


def test_every_subcommand_describes_itself_and_shows_required_options_and_defaults(capsys):
    from prunepriv.parser import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert sub.description and len(sub.description) > 40, name
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    text = capsys.readouterr().out
    assert "--profile PROFILE" in text.split("\n")[0] and "[--profile" not in text   # required, shown so
    flat = " ".join(text.split())                     # help wraps at the terminal's width (a long path moves it)
    assert "(default: " in flat and "--output-root" in flat


def test_reproduce_without_profile_lists_the_profiles_and_a_typo_gets_the_nearest(capsys):
    assert main(["reproduce"]) == 2
    err = capsys.readouterr().err
    assert "reproduce needs --profile: full" in err and "smoke" in err
    assert main(["reproduce", "--profile", "papr"]) == 2
    assert "did you mean 'paper'?" in capsys.readouterr().err


def test_version_answers_without_loading_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "prunepriv.cli", "--version"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("prunepriv ")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "pandas" not in imported


def test_a_nonprivate_finetune_trains_with_the_flags_given_and_the_profiles_recipe_elsewhere():
    from prunepriv import cli, load_profile
    from prunepriv.arguments import profile_from_args
    from prunepriv.parser import build_parser

    args = build_parser().parse_args(["finetune", "--epsilon", "inf", "--output", "out", "--data", "synthetic",
                                      "--learning-rate", "0.1", "--set", "finetune.lora_rank=2"])
    cli._nonprivate_as_given(args)
    args.settings = ["finetune.epsilons=[.inf]", "finetune.model_epsilons=null", "finetune.utility_match=null",
                     "finetune.replicate_epsilons=null", *args.settings]
    nonprivate = profile_from_args(args).finetune.nonprivate
    paper = load_profile("paper").finetune.nonprivate
    assert (nonprivate.learning_rate, nonprivate.lora_rank) == (0.1, 2)                    # what the user gave
    assert (nonprivate.batch_size, nonprivate.lora_alpha) == (paper.batch_size, paper.lora_alpha)   # the recipe
