"""``prunepriv tune`` (issue 14): DP hyper-parameters chosen on a public proxy corpus, never the private one."""
from __future__ import annotations

import math

import pandas as pd
import pytest

import prunepriv
from prunepriv.cli import main
from prunepriv.commands import tune
from prunepriv.errors import ConfigError


def test_proxy_corpus_shares_no_record_with_the_private_corpus():
    profile = prunepriv.load_profile("smoke")
    private, proxy = prunepriv.corpus_for(profile), tune.proxy_corpus(profile)
    texts = lambda c: {r.text for split in c.splits.values() for r in split}    # noqa: E731
    assert not texts(private) & texts(proxy)
    assert {s: len(r) for s, r in proxy.splits.items()}.keys() == private.splits.keys()
    with pytest.raises(ConfigError, match="public proxy"):
        tune.proxy_corpus(prunepriv.load_profile("smoke", {"data": {"source": "notes.jsonl"}}))


def test_candidates_labels_and_recovered_gain():
    grid = {"learning_rate": [0.002, 0.005], "target_modules": [["q_proj", "v_proj"]]}
    options = tune.candidates(grid)
    assert options == [{"learning_rate": 0.002, "target_modules": ["q_proj", "v_proj"]},
                       {"learning_rate": 0.005, "target_modules": ["q_proj", "v_proj"]}]
    assert tune.label(options[0]) == "learning_rate=0.002,target_modules=q_proj+v_proj"
    with pytest.raises(ConfigError, match="cannot tune delta"):
        tune.candidates({"delta": [1e-5]})
    assert tune.recovered_gain(40.0, 40.0 ** 0.5, 1.0) == pytest.approx(0.5)   # half the log gain
    assert math.isnan(tune.recovered_gain(10.0, 9.0, 11.0))
    table = tune.choose(pd.DataFrame({"recovered": [0.9, 0.6, 0.3], "loss_spike_dp": [2.0, 1.0, 1.0],
                                      "loss_spike_nonprivate": [1.0, 1.0, 1.0]}))
    assert list(table["chosen"]) == [False, True, False]               # the best one spikes: never chosen


def test_tune_cli_on_a_tiny_model(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "tuning"
    argv = ["tune", "--profile", "smoke", "--model", str(tiny_model_dir), "--epsilon", "8",
            "--grid", "learning_rate=0.001,0.02", "--output", str(out),
            "--set", "data.n_patients=24", "--set", "finetune.batch_size=8", "--set", "finetune.physical_batch_size=4",
            "--set", "finetune.epochs=0.5", "--set", "finetune.eval_samples=4", "--set", "finetune.max_length=24"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "tuning.csv")
    assert list(table["learning_rate"]) == [0.001, 0.02] and table["chosen"].sum() == 1
    assert (table["epsilon_rdp"] <= 8 * 1.02).all() and (table["steps_dp"] == table["steps_nonprivate"]).all()
    assert "chosen: learning_rate=" in printed
    assert (out / "learning_rate=0.02" / "eps-8" / "adapter" / "adapter_model.safetensors").is_file()
    assert main(argv) == 0                                              # reloaded, not retrained
    assert pd.read_csv(out / "tuning.csv")["perplexity_dp"].tolist() == table["perplexity_dp"].tolist()
    capsys.readouterr()
    assert main(["tune", "--grid", "learning_rate", "--output", str(tmp_path / "x")]) == 2
    assert main(["tune", "--grid", "delta=1e-5", "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "argument --grid: wants KEY=V1,V2" in err[0] and "cannot tune delta" in err[1]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
