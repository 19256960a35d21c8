"""The `full` profile (issue 14): the literature's scale for one GPU, checked by its numbers here and run
end to end at toy size (it has not run at full size on this project's CPU machines)."""
from __future__ import annotations

import math
from pathlib import Path

from conftest import tiny_model

import prunepriv
from prunepriv.privacy.specs import finetune_specs, run_noise_multiplier
from prunepriv.stages import experiments


def test_full_profile_is_at_the_literature_scale():
    profile = prunepriv.load_profile("full")
    f, d, m = profile.finetune, profile.data, profile.memorization
    corpus = prunepriv.corpus_for(profile)
    n = len(corpus.texts("train"))
    q = f.batch_size / n
    steps = math.ceil(f.epochs / q)
    assert 15_000 <= n <= 17_000 and f.batch_size == 1024 and 110 <= steps <= 130
    assert f.epsilons == [math.inf, 8, 3, 1] and f.utility_match == 8 and f.replicates >= 3
    assert f.replicate_models is None and f.replicate_epsilons is None         # every setting, three seeds
    b = profile.baselines
    assert b.dpkd and b.dpimp and b.magnitude and len(b.heal_strategies) == 5  # what the paper profile leaves out
    assert f.delta < 1 / n and d.notes_per_patient == 1                     # patient-level ε
    assert d.n_audit_canaries == 2048 and m.n_candidates == 1024
    assert d.n_canaries // len(d.canary_repetitions) >= 32 and d.n_heldout_canaries >= 32
    _, privacy, _ = finetune_specs(profile)
    sigma = run_noise_multiplier(privacy[8], q, steps, f.delta)
    assert sigma / f.batch_size < 2e-3            # noise per step of the mean gradient: the regime that learns
    assert d.calibration == "public"              # no private use of data outside DP-SGD


def test_full_profile_runs_at_toy_size(byte_tokenizer, tmp_path):
    profile = prunepriv.load_profile("full", {
        "data": {"n_patients": 40, "n_canaries": 3, "n_heldout_canaries": 2, "n_audit_canaries": 8},
        "finetune": {"models": ["unpruned"], "replicates": 2, "batch_size": 8, "physical_batch_size": 4,
                     "epochs": 0.5, "eval_samples": 4, "max_length": 24}})
    corpus = prunepriv.corpus_for(profile)
    runs = experiments.finetune_sweep(tiny_model("llama", layers=2), byte_tokenizer, corpus, [], profile, tmp_path)
    assert len(runs) == 4 * 2 + 2                        # ε ∈ {∞, 8, 3, 1} × 2 seeds + a utility-matched run per seed
    matched = runs[runs["model"] == "unpruned-matched"]
    assert list(matched["replicate"]) == [0, 1] and (matched["matched_epsilon"] == 8).all()
    assert runs["seed"].nunique() == len(runs)
    assert all((Path(d) / "adapter" / "adapter_model.safetensors").is_file() for d in runs["run_dir"])
    private = runs[runs["target_epsilon"] < math.inf]
    assert (private["epsilon_rdp"] <= private["target_epsilon"] * 1.02).all()
