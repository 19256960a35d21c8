"""Stages 04-05 on tiny models: every attack runs with its control, the audit's
lower bound stays below the accountant's ε, results resume, bad input fails."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model

from prunepriv.config import MemorizationConfig
from prunepriv.data import synthetic_corpus
from prunepriv.errors import DataError
from prunepriv.privacy.specs import LoRASpec, PrivacySpec, TrainSpec
from prunepriv.privacy.train import finetune
from prunepriv.stages import memorization

CFG = MemorizationConfig(n_samples=4, max_new_tokens=12, batch_size=4, max_length=48, quality_references=6,
                         n_candidates=8, mia_samples=6, prefix_records=3, prefix_tokens=8, suffix_tokens=6,
                         rank_top_k=2)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, byte_tokenizer):
    """A synthetic corpus with audit canaries and two fine-tuned tiny models (ε = ∞ and ε = 4)."""
    root = tmp_path_factory.mktemp("runs")
    corpus = synthetic_corpus(seed=0, n_patients=24, notes_per_patient=2, n_canaries=2, canary_repetitions=[2],
                              n_heldout_canaries=2, n_audit_canaries=24)
    base = tiny_model("llama", layers=3)
    texts = corpus.texts("train")
    rows = []
    for eps in (math.inf, 4.0):
        out = root / f"unpruned-eps-{eps:g}"
        result = finetune(copy.deepcopy(base), byte_tokenizer, texts, out, LoRASpec(4, 8, 0.0, ["q_proj", "v_proj"]),
                          PrivacySpec(eps, None, 1.0, None, "rdp"), TrainSpec(1.0, 1e-2, 16, 8, 48, 100, 0, "seeded"),
                          progress=False)
        r = result.privacy
        rows.append({"model": "unpruned", "target_epsilon": eps, "epsilon_rdp": r.epsilon_rdp,
                     "epsilon_prv": r.epsilon_prv, "delta": r.delta, "noise_multiplier": r.noise_multiplier,
                     "sample_rate": r.sample_rate, "steps": r.steps, "run_dir": str(out)})
    return corpus, {"unpruned": base}, pd.DataFrame(rows), root


def test_corpus_has_fair_coin_audit_canaries():
    corpus = synthetic_corpus(seed=0, n_patients=10, n_audit_canaries=400)
    audit = corpus.canaries_for("audit")
    assert len(audit) == 400 and 160 < sum(c.in_train for c in audit) < 240
    train = corpus.texts("train")
    assert all((c.text in train) == c.in_train for c in audit)
    again = synthetic_corpus(seed=0, n_patients=10, n_audit_canaries=400).canaries_for("audit")
    assert [c.in_train for c in again] == [c.in_train for c in audit]


def test_stages_04_05_on_tiny_models(tiny_runs, byte_tokenizer, monkeypatch):
    corpus, bases, runs, root = tiny_runs
    synthetic = memorization.synthetic_sweep(runs, bases, byte_tokenizer, corpus, CFG, 0, root / "synthetic")
    assert list(synthetic["samples"]) == [4, 4]
    assert (synthetic["bertscore_f1_heldout"].between(-1, 1) | synthetic["bertscore_f1_heldout"].isna()).all()
    results = memorization.memorization_sweep(runs, bases, byte_tokenizer, corpus, CFG, 0, synthetic,
                                              root / "memorization")
    table = memorization.memorization_table(results)
    assert {"extraction_excess", "pii_leaked_train", "pii_leaked_heldout", "exposure_trained",
            "exposure_heldout", "mia_auc_loss", "prefix_match_heldout"} <= set(table.columns)
    assert table["mia_auc_loss"].between(0, 1).all()
    assert len(memorization.exposure_table(results)) == 2 * 4
    for r in results:                    # each canary beside its own exposure before fine-tuning
        for e in r["exposure"]:
            assert e["excess"] == pytest.approx(e["exposure"] - e["exposure_untuned"])
    assert {"exposure_excess_trained", "exposure_excess_heldout", "epsilon_attainable"} <= \
        set(table.columns) | set(memorization.audit_table(results).columns)
    audit = memorization.audit_table(results)
    private = audit[np.isfinite(audit["target_epsilon"])]
    assert len(private) == 1 and private["audit_canaries"].iloc[0] == 24
    # the audit may never claim more leakage than the accountant allows
    assert (private["epsilon_lower_bound"] <= private["epsilon_rdp_at_audit_delta"]).all()
    assert private["epsilon_rdp_at_audit_delta"].iloc[0] > runs["epsilon_rdp"].iloc[1]   # smaller δ, larger ε
    # a second sweep with nothing changed reloads the saved results
    monkeypatch.setattr(memorization, "attack_run", lambda *a, **k: pytest.fail("recomputed a finished run"))
    again = memorization.memorization_sweep(runs, bases, byte_tokenizer, corpus, CFG, 0, synthetic,
                                            root / "memorization")
    assert json.dumps(again, default=str, sort_keys=True) == json.dumps(results, default=str, sort_keys=True)


def test_a_utility_matched_run_is_sampled_and_attacked_on_its_base_model(tiny_runs, byte_tokenizer, tmp_path):
    """Issue 14: a ``<model>-matched`` run (stage 03's utility-matched baseline) goes through stages 04 and
    05 with its base model's untuned references, and the comparison with its DP twin has intervals."""
    import shutil

    from prunepriv.report import matched

    corpus, bases, runs, root = tiny_runs
    twin_dir = tmp_path / "unpruned-matched-eps-inf"
    shutil.copytree(Path(runs["run_dir"].iloc[0]), twin_dir)
    twin = runs.iloc[[0]].assign(model="unpruned-matched", run_dir=str(twin_dir), matched_epsilon=4.0,
                                 stop_perplexity=50.0)
    table = pd.concat([runs.assign(matched_epsilon=math.nan, stop_perplexity=math.nan), twin],
                      ignore_index=True).assign(perplexity_private=50.0)
    synthetic = memorization.synthetic_sweep(table, bases, byte_tokenizer, corpus, CFG, 0, tmp_path / "synthetic")
    assert list(synthetic["model"]) == ["unpruned", "unpruned", "unpruned-matched"]
    results = memorization.memorization_sweep(table, bases, byte_tokenizer, corpus, CFG, 0, synthetic,
                                              tmp_path / "memorization")
    assert [r["model"] for r in results] == ["unpruned", "unpruned", "unpruned-matched"]
    # the same adapter as the non-private run, the same base: the same exposures and AUCs
    assert [e["exposure"] for e in results[2]["exposure"]] == [e["exposure"] for e in results[0]["exposure"]]
    comparison = matched.comparison(table, memorization.exposure_table(results), memorization.mia_table(results))
    assert list(comparison["model"]) == ["unpruned"] and comparison["epsilon"].iloc[0] == 4.0
    assert math.isfinite(comparison["exposure_difference"].iloc[0])


def test_paired_control_is_the_untuned_exposure_of_the_same_canary(tiny_runs, byte_tokenizer):
    """Issue 14: the control is the canary's exposure on the same candidates before fine-tuning, so an
    untouched model has excess exactly 0 for every canary whatever its prior."""
    corpus, bases, _, _ = tiny_runs
    refs = memorization.References(bases, byte_tokenizer, 48, 4)
    canaries = corpus.canaries_for("exposure")
    rows = memorization.paired_exposure(bases["unpruned"], lambda c: refs.exposure("unpruned", c, 8, 0),
                                        byte_tokenizer, canaries, 8, 0)
    assert [r["excess"] for r in rows] == [0.0] * len(canaries)
    assert len({r["exposure_untuned"] for r in rows}) > 1          # the priors differ between canaries
    assert memorization.mean_excess(rows, trained=True) == 0.0


def test_membership_sides_share_the_note_type_mix():
    """Issue 14: members are drawn per note type to match the non-members, so the attack cannot score
    the type; a kind the training side lacks drops out of both sides."""
    from collections import Counter

    corpus = synthetic_corpus(seed=0, n_patients=60, notes_per_patient=2)
    train, held = memorization.note_records(corpus, "train"), memorization.note_records(corpus, "heldout")[:20]
    members, nonmembers = memorization.kind_matched(train, held, seed=0)
    assert len(members) == len(nonmembers) == 20
    assert Counter(r.kind for r in members) == Counter(r.kind for r in nonmembers)
    assert not {r.id for r in members} & {r.id for r in nonmembers}
    assert [r.id for r in memorization.kind_matched(train, held, seed=0)[0]] == [r.id for r in members]
    rare = [r for r in train if r.kind != held[0].kind]
    m, n = memorization.kind_matched(rare, held, seed=0)
    assert held[0].kind not in {r.kind for r in m} | {r.kind for r in n} and len(m) == len(n)


def test_empty_generation_set_is_a_data_error(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="no generated text"):
        memorization.load_samples(path)
    with pytest.raises(DataError, match="run stage 04"):
        memorization.load_samples(tmp_path / "missing.jsonl")


def test_a_run_read_back_from_csv_keeps_an_empty_uncovered_uses(tmp_path):
    """pandas reads an empty text cell as NaN; the run's ``uncovered_uses`` stays text."""
    from prunepriv.privacy.record import FinetuneRun, runs_of

    runs = [FinetuneRun(model="unpruned", target_epsilon=3.0, epsilon_rdp=2.9, epsilon_prv=2.5, delta=1e-4,
                        noise_multiplier=1.1, sample_rate=0.1, steps=10, run_dir="r1"),
            FinetuneRun(model="pruned", target_epsilon=3.0, epsilon_rdp=2.9, epsilon_prv=2.5, delta=1e-4,
                        noise_multiplier=1.1, sample_rate=0.1, steps=10, run_dir="r2",
                        uncovered_uses="layer choice (cosine) on 8 records of x (private)")]
    pd.DataFrame([r.to_row() for r in runs]).to_csv(tmp_path / "finetune.csv", index=False)
    back = runs_of(pd.read_csv(tmp_path / "finetune.csv"))
    assert [r.uncovered_uses for r in back] == ["", "layer choice (cosine) on 8 records of x (private)"]
