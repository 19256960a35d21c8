"""End to end on the real embedded model (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from prunepriv import (
    choose_layers,
    corpus_for,
    decoder_layers,
    load_model,
    remove_layers,
)
from prunepriv.config import STRATEGIES, load_profile
from prunepriv.lm.evaluation import perplexity
from prunepriv.lm.models import cast_weights
from prunepriv.pipeline.reproduce import reproduce
from prunepriv.privacy.record import base_model, is_matched
from prunepriv.results import sha256_file
from prunepriv.stages.experiments import calibration_texts, measure_similarity

pytestmark = pytest.mark.e2e

EXPECTED = {"fig:layer-similarity-heatmap", "fig:adjacent-similarity", "fig:latency-vs-layers",
            "fig:perplexity-vs-layers", "tab:pruning", "tab:finetuning", "fig:utility-vs-epsilon",
            "fig:training-curves", "tab:synthetic", "tab:memorization", "fig:epsilon-vs-memorization",
            "tab:audit", "fig:audit", "data:membership-inference", "data:canary-exposure",
            "tab:federated", "fig:federated-agreement", "tab:private-selection", "fig:private-selection",
            "tab:compression-baselines", "fig:compression-baselines", "tab:utility-matched", "tab:pruning-healed",
            "fig:pruning-healed"}


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded", device="cpu", precision="fp32")


def test_embedded_model_prunes_saves_reloads_and_generates(embedded, tmp_path):
    model, tokenizer = embedded
    assert model.config.num_hidden_layers == 30
    pruned = remove_layers(copy.deepcopy(model), list(range(12, 20)))
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = tokenizer(["Discharge summary: the patient was admitted with"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(pruned(**batch).logits, reloaded(**batch).logits, atol=1e-4)
        cached = reloaded.generate(**batch, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = reloaded.generate(**batch, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert reloaded.config.num_hidden_layers == 22


@pytest.mark.longest
def test_smoke_profile_every_stage_with_papermill_then_cached(tmp_path):
    results = reproduce("smoke", None, output_root=tmp_path, progress=False)
    assert [r.stage for r in results] == ["01", "02", "03", "04", "05", "06", "07"]
    assert not any(r.skipped for r in results)
    manifest = json.loads((tmp_path / "results/smoke/manifest.json").read_text())
    assert EXPECTED <= set(manifest["artifacts"])
    for entry in manifest["artifacts"].values():
        for file in entry["files"]:
            assert sha256_file(tmp_path / file["path"]) == file["sha256"]
        assert entry["provenance"]["profile"] == "smoke"
    for stem in ("layer_similarity_heatmap", "adjacent_similarity", "latency_vs_layers", "perplexity_vs_layers"):
        for ext in ("png", "pdf"):
            assert (tmp_path / "figures/smoke" / f"{stem}.{ext}").stat().st_size > 1000
    table = pd.read_csv(tmp_path / "results/smoke/pruning.csv")
    profile = load_profile("smoke")
    assert set(table["strategy"]) == set(STRATEGIES)
    assert set(table["removed"]) == set(profile.pruning.remove)
    unpruned = table[table["removed"] == 0]["perplexity_private"]
    assert unpruned.nunique() == 1 and 1 < unpruned.iloc[0] < 1000
    worst = table.groupby("strategy")["perplexity_private"].max()
    assert (worst >= unpruned.iloc[0]).all()            # removing layers never helps the unhealed model here
    _check_finetuning(tmp_path, profile)
    _check_memorization(tmp_path, profile)
    _check_baselines(tmp_path, profile)
    for name in ("01_layer_similarity", "02_layer_pruning", "03_private_finetuning", "04_synthetic_data",
                 "05_memorization", "06_baselines", "07_paper"):
        executed = json.loads((tmp_path / "results/smoke/notebooks" / f"{name}.ipynb").read_text())
        assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
        assert (tmp_path / "results/smoke/notebooks" / f"{name}.html").stat().st_size > 10_000
        _check_readable(executed, name, tmp_path)
    _check_paper(tmp_path)
    again = reproduce("smoke", None, output_root=tmp_path, progress=False)
    assert all(r.skipped for r in again)                  # nothing changed: every stage cached


def _check_readable(executed: dict, name: str, root) -> None:
    """An executed notebook a reader can read: a handful of stderr outputs at most (no progress-bar
    spam, no known warnings), no path of the machine that ran it, and a generated findings cell."""
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    stderr = ["".join(o["text"]) for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert len(stderr) <= 3, (name, stderr[:5])
    text = json.dumps(outputs)
    assert str(root) not in text and "site-packages" not in text, name
    last = executed["cells"][-1]
    assert "findings." in "".join(last["source"])
    markdown = [o["data"]["text/markdown"] for o in last["outputs"] if "text/markdown" in o.get("data", {})]
    assert markdown and "".join(markdown[0]).startswith("- "), (name, last["outputs"])


def _check_paper(root) -> None:
    """Notebook 07 wrote parseable LaTeX for the smoke profile, outside paper/generated/."""
    from prunepriv.report import latex

    generated = root / "results/smoke/paper"
    names = {p.relative_to(generated).as_posix() for p in generated.rglob("*.tex")}
    assert names == {"numbers.tex"} | {f"tables/{t}.tex" for t in
                                       ("pruning", "latency", "finetune", "memorization", "audit",
                                        "federated", "selection", "compression", "healing")}
    for path in generated.rglob("*.tex"):
        assert latex.problems(path.read_text()) == [], path
    assert r"\newcommand{\ppClaimPrivacyEpsilonEpsThree}" in (generated / "numbers.tex").read_text()
    assert r"\newcommand{\ppClaimHealingPerplexityCosine}" in (generated / "numbers.tex").read_text()
    assert not (root / "paper/generated").exists()
    claims = pd.read_csv(root / "results/smoke/claims.csv")
    assert {"audit.below_accountant", "finetune.healing.pruned"} <= set(claims["claim"])


def _check_baselines(root, profile) -> None:
    """Notebook 06: the end-to-end ε recomputes from both logged mechanisms; federated = centralized."""
    from opacus.accountants import RDPAccountant

    chosen = pd.read_csv(root / "results/smoke/private_selection.csv")
    private = chosen[chosen["selection_epsilon"] != float("inf")]
    assert len(private) == len(profile.baselines.selection_finetune)
    for row in private.itertuples():
        acc = RDPAccountant()
        acc.history = [(row.selection_sigma, 1.0, 1), (row.noise_multiplier, row.sample_rate, int(row.steps))]
        assert acc.get_epsilon(row.delta) == pytest.approx(row.end_to_end_epsilon_rdp, rel=1e-9)
        assert max(row.selection_epsilon_rdp, row.finetune_epsilon_rdp) < row.end_to_end_epsilon_rdp
        assert row.end_to_end_epsilon_rdp < row.selection_epsilon_rdp + row.finetune_epsilon_rdp
        assert row.selection_epsilon_rdp == pytest.approx(row.selection_epsilon, rel=2e-3)
    fed = pd.read_csv(root / "results/smoke/federated.csv")
    layers = fed[fed["method"].str.startswith("layer removal")].set_index("source")
    assert layers.loc["federated", "removed"] == layers.loc["centralized", "removed"]
    comp = pd.read_csv(root / "results/smoke/compression_baselines.csv")
    assert list(comp["model"]) == ["dense", "Wanda 13%", f"layer removal (k={profile.pruning.paper_remove})"]
    assert (comp["target_epsilon"] == profile.baselines.epsilon).all()
    assert (comp["epsilon_rdp"] <= profile.baselines.epsilon * 1.02).all()
    rows = comp.set_index("model")
    for model, name in (("unpruned", "dense"), ("pruned", f"layer removal (k={profile.pruning.paper_remove})")):
        same = runs_at(root, profile.baselines.epsilon, model)   # stage 03's run, reloaded: one protocol, one value
        assert rows.loc[name, "seed"] == same["seed"]
        assert rows.loc[name, "perplexity_private"] == pytest.approx(same["perplexity_private"])
    assert comp["uncovered_uses"].fillna("").str.contains("Wanda masks").any()   # smoke calibrates on private text
    assert "timing_note" in comp                                     # empty note: a clean timing
    removal = comp.set_index("model").loc[f"layer removal (k={profile.pruning.paper_remove})"]
    # layers matched by prefill time: defined wherever removing layers measured faster than dense (a busy
    # machine, e.g. two test workers on two cores, can time it slower: then there is nothing to match)
    assert comp["latency_matched_layers"].notna().all() or removal["prefill_ratio"] >= 1
    healed = pd.read_csv(root / "results/smoke/pruning_healed.csv").set_index("strategy")
    assert list(healed.index) == profile.baselines.heal_strategies
    pruned = pd.read_csv(root / "results/smoke/finetune.csv")
    pruned = pruned[(pruned["model"] == "pruned") & (pruned["target_epsilon"] == profile.baselines.epsilon)].iloc[0]
    assert healed.loc["cosine", "source"] == "stage 03" and healed.loc["cosine", "seed"] == pruned["seed"]
    assert healed.loc["cosine", "perplexity_private"] == pytest.approx(pruned["perplexity_private"])


def runs_at(root, epsilon: float, model: str = "unpruned") -> pd.Series:
    """Stage 03's first run (replicate 0) of ``model`` at ``epsilon``."""
    runs = pd.read_csv(root / "results/smoke/finetune.csv")
    return runs[(runs["model"] == model) & (runs["target_epsilon"] == epsilon) & (runs["replicate"] == 0)].iloc[0]


def _check_finetuning(root, profile) -> None:
    """Every (model, ε) ran; ε comes from the run's accountant; non-private fine-tuning helps."""
    from prunepriv.privacy.specs import epsilon_for

    runs = pd.read_csv(root / "results/smoke/finetune.csv")
    f = profile.finetune
    planned = sum(f.replicates_of(m, e) for m in f.models for e in f.epsilons)
    matched_runs = sum(f.replicates_of(m, f.utility_match) for m in f.models) if f.utility_match is not None else 0
    assert len(runs) == planned + matched_runs and planned > len(f.models) * len(f.epsilons)   # replicated settings
    assert runs["seed"].nunique() == len(runs)          # every run its own batches and noise
    replicated = runs[(runs["model"] == "pruned") & (runs["target_epsilon"] == 3)]
    assert sorted(replicated["replicate"]) == [0, 1]
    nonprivate = json.loads((root / runs[runs["target_epsilon"] == float("inf")]["run_dir"].iloc[0]
                             / "adapter" / "adapter_config.json").read_text())
    assert nonprivate["r"] == f.nonprivate.lora_rank   # the non-private recipe's own adapter
    ordinary = runs[~runs["model"].map(is_matched)]      # a matched run may stop after one step: no curve
    assert ordinary["loss_spike"].notna().all()          # each run's curve checked for spikes (a claim)
    for row in runs.itertuples():
        if is_matched(row.model):                        # stopped at its DP twin's perplexity, or ran out of steps
            twin = runs[(runs["model"] == base_model(row.model)) & (runs["target_epsilon"] == f.utility_match)]
            assert row.stop_perplexity == pytest.approx(twin["perplexity_private"].iloc[0])
            assert row.noise_multiplier == 0 and row.target_epsilon == float("inf")
            assert row.perplexity_private <= row.stop_perplexity * (1 + 1e-9) or row.steps == runs["steps"].max()
        elif row.target_epsilon == float("inf"):
            assert row.noise_multiplier == 0 and row.epsilon_rdp == float("inf")
            assert row.perplexity_private < row.perplexity_private_before
        else:
            assert row.epsilon_rdp <= row.target_epsilon * 1.02
            assert row.epsilon_rdp == pytest.approx(
                epsilon_for(row.noise_multiplier, row.sample_rate, row.steps, row.delta), rel=1e-9)
            assert row.epsilon_prv <= row.epsilon_rdp
        assert (root / row.run_dir / "adapter" / "adapter_model.safetensors").is_file()
        uses = json.loads((root / row.run_dir / "privacy.json").read_text())["data_uses"]
        # the pruned model's layers were chosen on the private calibration split (profile: calibration private)
        assert [u["purpose"] for u in uses[:-1]] == (["layer choice (cosine)"] if base_model(row.model) == "pruned"
                                                      else [])
    pruned = runs[runs["model"] == "pruned"]
    assert (pruned["layers"] == 30 - profile.pruning.paper_remove).all()


def _check_memorization(root, profile) -> None:
    """Every fine-tuned model was sampled and attacked; the audit stays below the accountant."""
    runs = pd.read_csv(root / "results/smoke/finetune.csv")
    synthetic = pd.read_csv(root / "results/smoke/synthetic.csv")
    assert len(synthetic) == len(runs) and (synthetic["samples"] == profile.memorization.n_samples).all()
    assert (synthetic["empty_samples"] < synthetic["samples"]).all()
    table = pd.read_csv(root / "results/smoke/memorization.csv")
    assert len(table) == len(runs)
    assert table[["mia_auc_loss", "closer_to_train", "prefix_match_train", "prefix_match_heldout"]].apply(
        lambda c: c.between(0, 1)).all().all()
    exposure = pd.read_csv(root / "results/smoke/canary_exposure.csv")
    assert set(exposure["repetitions"]) == {0, *profile.data.canary_repetitions}
    audit = pd.read_csv(root / "results/smoke/audit.csv")
    private = audit[audit["target_epsilon"] != float("inf")]
    assert len(private) and (private["epsilon_lower_bound"] <= private["epsilon_rdp_at_audit_delta"]).all()
    assert (audit["audit_canaries"] == profile.data.n_audit_canaries).all()
    matched = pd.read_csv(root / "results/smoke/utility_matched.csv")      # DP minus its utility-matched twin
    expected = profile.finetune.models if profile.finetune.utility_match is not None else []
    assert list(matched["model"]) == expected and matched["exposure_difference"].notna().all()


def test_bf16_matches_fp32_on_the_embedded_model(embedded):
    """Issue 13's equivalence: held-out perplexity within 2% and the same layers chosen by the paper's strategy."""
    profile = load_profile("smoke")
    corpus = corpus_for(profile)
    heldout = corpus.texts("heldout")[:8]       # bf16 is emulated (slow) on CPUs without AVX-512 BF16
    calibration = calibration_texts(profile, corpus, profile.similarity.n_samples)
    fp32, tokenizer = embedded
    found = {}
    for name, model in (("fp32", fp32), ("bf16", cast_weights(copy.deepcopy(fp32), torch.bfloat16))):
        sim = measure_similarity(model, tokenizer, calibration, profile.similarity.max_length,
                                 profile.similarity.batch_size)
        layers = choose_layers(profile.pruning.paper_strategy, profile.pruning.paper_remove,
                               len(decoder_layers(model)), sim)
        found[name] = (perplexity(model, tokenizer, heldout, 96, 8), layers, sim.adjacent)
    (ppl32, layers32, adj32), (ppl16, layers16, adj16) = found["fp32"], found["bf16"]
    assert abs(ppl16 - ppl32) <= 0.02 * ppl32, (ppl32, ppl16)
    print(f"held-out perplexity fp32 {ppl32:.3f}, bf16 {ppl16:.3f}")
    assert layers16 == layers32, (layers32, layers16, adj32, adj16)
