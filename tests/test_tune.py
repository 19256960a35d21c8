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


def test_dp_candidates_are_scored_against_the_best_nonprivate_run_not_their_twin():
    table = tune.choose(pd.DataFrame({
        "kind": ["nonprivate", "nonprivate", "dp", "dp", "dp"],
        "perplexity_before": [40.0] * 5,
        "perplexity_seed0": [4.0, 1.0, 40.0 ** 0.5, 40.0 ** 0.25, 10.0],
        "perplexity_seed1": [4.0, 50.0, 40.0 ** 0.5, 40.0 ** 0.25, 10.0],
        "perplexity": [4.0, 2.0 ** 0.5 * 5, 40.0 ** 0.5, 40.0 ** 0.25, 10.0],   # geometric means over seeds
        "loss_spike": [1.0, 2.0, 1.0, 1.7, 1.0]}))
    assert list(table["best_nonprivate"]) == [True, False, False, False, False]   # the spiking one never counts
    share = math.log(40 / 40 ** 0.5) / math.log(40 / 4.0)
    assert table.loc[2, "recovered"] == pytest.approx(share)
    assert list(table["chosen"]) == [False, False, True, False, False]            # the best share spikes


def test_tune_cli_on_a_tiny_model(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "tuning"
    argv = ["tune", "--profile", "smoke", "--model", str(tiny_model_dir), "--epsilon", "8",
            "--grid", "learning_rate=0.001,0.02", "--nonprivate-grid", "batch_size=4", "--seeds", "2",
            "--output", str(out),
            "--set", "data.n_patients=24", "--set", "finetune.batch_size=8", "--set", "finetune.physical_batch_size=4",
            "--set", "finetune.epochs=0.5", "--set", "finetune.eval_samples=4", "--set", "finetune.max_length=24"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "tuning.csv")
    assert list(table["kind"]) == ["nonprivate", "dp", "dp"] and table["chosen"].sum() == 1
    assert table["best_nonprivate"].sum() == 1 and list(table["batch_size_used"]) == [4, 8, 8]
    dp = table[table["kind"] == "dp"]
    assert list(dp["learning_rate"]) == [0.001, 0.02] and (dp["epsilon_rdp"] <= 8 * 1.02).all()
    assert (table["perplexity_seed0"] != table["perplexity_seed1"]).all()       # two seeds, two runs
    assert table["removed_layers"].notna().all()                               # the pruned model, chosen on the proxy
    assert "chosen: learning_rate=" in printed and "best non-private: batch_size=4" in printed
    assert (out / "dp" / "learning_rate=0.02" / "seed1" / "adapter" / "adapter_model.safetensors").is_file()
    assert main(argv) == 0                                              # reloaded, not retrained
    assert pd.read_csv(out / "tuning.csv")["perplexity"].tolist() == table["perplexity"].tolist()
    capsys.readouterr()
    assert main(["tune", "--grid", "learning_rate", "--output", str(tmp_path / "x")]) == 2
    assert main(["tune", "--grid", "delta=1e-5", "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "argument --grid: wants KEY=V1,V2" in err[0] and "cannot tune delta" in err[1]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_candidate_at_another_epsilon_drops_the_profiles_per_model_epsilons():
    profile = prunepriv.load_profile("paper")                  # lists the unpruned model at ε = 8 only
    assert tune.with_candidate(profile, {"learning_rate": 0.01}, 3.0).finetune.epsilons == [math.inf, 3.0]


def test_a_diverged_candidate_is_neither_stable_nor_chosen():
    table = pd.DataFrame({"kind": ["nonprivate", "nonprivate", "dp"], "loss_spike": [math.nan, 0.1, 0.1],
                          "perplexity": [math.nan, 40.0, 60.0], "perplexity_seed0": [math.nan, 40.0, 60.0],
                          "perplexity_before": [100.0] * 3})
    out = tune.choose(table)
    assert list(out["stable"]) == [False, True, True] and list(out["best_nonprivate"]) == [False, True, False]
