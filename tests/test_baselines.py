"""Notebook 06's building blocks: unstructured sparsity, federated aggregation,
private layer selection and the composition of its ε with DP-SGD's."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model

import prunepriv
from prunepriv.compress import sparsity
from prunepriv.compress.similarity import layer_similarity
from prunepriv.compress.wanda import sequential_wanda_masks
from prunepriv.data import Record
from prunepriv.errors import ConfigError, DataError, PrunePrivError, PruningError
from prunepriv.lm.text import batches
from prunepriv.privacy import federated, selection
from prunepriv.privacy.record import FinetuneRun
from prunepriv.privacy.specs import LoRASpec, PrivacySpec, TrainSpec
from prunepriv.privacy.train import finetune
from prunepriv.report import claims, latex, paper
from prunepriv.stages import baselines, findings, healing, plots

REFERENCE = Path(__file__).resolve().parents[1] / "results/paper/reference"
TEXTS = [f"Patient {i} was seen on day {i % 7} for a follow-up of condition {i % 5}; vitals stable." for i in range(24)]


def linear_weights(model):
    return {n: m.weight.detach().clone() for n, m in sparsity.prunable_linears(model).items()}


# --------------------------------------------------------------------------- sparsity

def test_magnitude_prunes_exactly_half_of_each_matrix_and_keeps_the_largest():
    model = tiny_model("llama", layers=3)
    masks = sparsity.magnitude_masks(model, 0.5)
    for name, m in sparsity.prunable_linears(model).items():
        mask = masks[name]
        assert int(mask.sum()) == m.weight.numel() - m.weight.numel() // 2
        w = m.weight.detach().abs()
        assert w[mask].min() >= w[~mask].max()


def test_wanda_prunes_per_output_row_and_reduces_to_magnitude_with_flat_norms(byte_tokenizer):
    model = tiny_model("llama", layers=3)
    stats = sparsity.input_norms(model, batches(byte_tokenizer, TEXTS[:6], 32, 3))
    masks = sparsity.wanda_masks(model, stats, 0.5)
    for name, mask in masks.items():
        assert (mask.sum(1) == mask.shape[1] - mask.shape[1] // 2).all()
    flat = sparsity.InputNorms({k: torch.ones_like(v) for k, v in stats.sumsq.items()}, stats.tokens)
    for name, mask in sparsity.wanda_masks(model, flat, 0.5).items():
        w = sparsity.prunable_linears(model)[name].weight.detach().abs()
        for row in range(w.shape[0]):
            assert w[row][mask[row]].min() >= w[row][~mask[row]].max()


def test_exact_count_even_with_tied_scores():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 0.0]])
    mask = sparsity.keep_top(scores, 3, 1)
    assert int(mask.sum()) == 3 and bool(mask[0, 4]) and not bool(mask[0, 5])


def test_input_norms_ignore_padding_and_add_across_shards(byte_tokenizer):
    model = tiny_model("llama", layers=2)
    one_by_one = sum((sparsity.input_norms(model, batches(byte_tokenizer, [t], 32, 1)) for t in TEXTS[1:6]),
                     sparsity.input_norms(model, batches(byte_tokenizer, TEXTS[:1], 32, 1)))
    padded = sparsity.input_norms(model, batches(byte_tokenizer, TEXTS[:6], 32, 6))
    assert one_by_one.tokens == padded.tokens
    for name in padded.sumsq:
        torch.testing.assert_close(one_by_one.sumsq[name], padded.sumsq[name], rtol=1e-4, atol=1e-6)


def test_apply_masks_zeroes_exactly_the_pruned_weights_and_checks_shapes():
    model = tiny_model("llama", layers=2)
    masks = sparsity.magnitude_masks(model, 0.5)
    pruned = sparsity.sparsified(model, masks)
    for name, m in sparsity.prunable_linears(pruned).items():
        assert int((m.weight == 0).sum()) == int((~masks[name]).sum())
    assert sparsity.mask_sparsity(masks) == pytest.approx(0.5, abs=1e-3)
    assert sparsity.nonzero_parameters(pruned) < sparsity.nonzero_parameters(model)
    bad = {name: mask[:, :-1] for name, mask in masks.items()}
    with pytest.raises(PruningError, match="shape"):
        sparsity.apply_masks(model, bad)
    with pytest.raises(PruningError, match="sparsity"):
        sparsity.magnitude_masks(model, 1.0)


def test_mask_agreement():
    a = {"x": torch.tensor([[True, False, False, True]])}
    b = {"x": torch.tensor([[True, False, True, False]])}
    assert sparsity.mask_agreement(a, a) == 1.0
    assert sparsity.mask_agreement(a, b) == pytest.approx(1 / 3)     # pruned {1,2} vs {1,3}


# --------------------------------------------------------------------------- federated

def records(n_patients: int, per_patient: int) -> list[Record]:
    return [Record(f"r{p}-{i}", f"note {i} of patient {p}", "note", f"p{p}") for p in range(n_patients)
            for i in range(per_patient)]


def test_client_shards_are_disjoint_whole_patients_and_sized():
    shards = federated.client_shards(records(12, 2), 3, 4, seed=0)
    assert [len(s) for s in shards] == [4, 4, 4]
    flat = [t for s in shards for t in s]
    assert len(set(flat)) == len(flat)
    owner = {}
    for i, shard in enumerate(shards):
        for text in shard:
            owner.setdefault(text.rsplit(" ", 1)[1], set()).add(i)
    assert all(len(o) == 1 for o in owner.values())
    with pytest.raises(DataError, match="clients"):
        federated.client_shards(records(2, 2), 3, 4, seed=0)


def test_token_weighted_federated_similarity_equals_centralized(byte_tokenizer):
    model = tiny_model("llama", layers=4)
    shards = [TEXTS[:3], TEXTS[3:10], TEXTS[10:12]]          # unequal shards and lengths
    local = [layer_similarity(model, list(batches(byte_tokenizer, s, 48, 4))) for s in shards]
    pooled = layer_similarity(model, list(batches(byte_tokenizer, [t for s in shards for t in s], 48, 4)))
    fed = federated.average_similarity(local)
    np.testing.assert_allclose(fed.matrix, pooled.matrix, atol=1e-5)   # float32 forwards batched differently
    np.testing.assert_allclose(fed.adjacent, pooled.adjacent, atol=1e-5)
    np.testing.assert_allclose(fed.block, pooled.block, atol=1e-5)
    assert fed.n_tokens == pooled.n_tokens


def test_count_aggregation_keeps_the_majority_and_equals_unanimous_masks():
    model = tiny_model("llama", layers=1)
    wanda_like = {name: sparsity.keep_top(m.weight.detach().abs(), m.weight.shape[1] - m.weight.shape[1] // 2, 1)
                  for name, m in sparsity.prunable_linears(model).items()}
    agg = federated.row_count_masks(model, [wanda_like] * 3, 0.5)
    assert all(torch.equal(agg[name], wanda_like[name]) for name in agg)        # unanimous clients: their mask
    name = next(iter(agg))
    columns = wanda_like[name].shape[1]
    first, second = (torch.zeros_like(wanda_like[name]) for _ in range(2))
    first[:, 0], second[:, 1] = True, True                                       # keep one column per row
    votes = [{**wanda_like, name: m} for m in (first, first, second)]
    top = federated.row_count_masks(model, votes, 1 - 1 / columns)
    assert top[name][:, 0].all() and not top[name][:, 1].any()                   # two votes beat one


def _full_forward_wanda(model, batch_list, level):
    """Independent reference for sequential Wanda: for each layer a full forward pass of the model with
    the earlier layers already pruned (the one-pass tools), keeping that layer's masks."""
    import copy

    masks = {}
    for i in range(len(prunepriv.lm.models.decoder_layers(model))):
        pruned = sparsity.apply_masks(copy.deepcopy(model), masks)
        layer = {k: v for k, v in sparsity.wanda_masks(pruned, sparsity.input_norms(pruned, batch_list), level).items()
                 if k.split(".")[0] == str(i)}
        masks.update(layer)
    return masks


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt_neox", "opt"])
def test_sequential_wanda_equals_forward_passes_through_the_pruned_layers(byte_tokenizer, family):
    """The official code's order (locuslab/wanda prune_wanda): layer i's statistics come from
    activations through layers 0..i-1 already pruned. Gemma 3 passes each layer its own mask
    (sliding or full attention), OPT and GPT-NeoX their own arguments."""
    model = tiny_model(family, layers=3)
    batch_list = list(batches(byte_tokenizer, TEXTS[:7], 32, 3))           # padded batches of 3, 3 and 1
    before = linear_weights(model)
    got = sequential_wanda_masks(model, batch_list, 0.5)
    want = _full_forward_wanda(model, batch_list, 0.5)
    assert got.keys() == want.keys() == set(sparsity.prunable_linears(model))
    for name in got:
        assert torch.equal(got[name], want[name]), name
    assert all(torch.equal(before[n], w) for n, w in linear_weights(model).items())     # model unchanged
    one_pass = sparsity.wanda_masks(model, sparsity.input_norms(model, batch_list), 0.5)
    assert all(torch.equal(got[n], one_pass[n]) for n in got if n.startswith("0."))      # layer 0: same inputs
    assert any(not torch.equal(got[n], one_pass[n]) for n in got if not n.startswith("0."))


def _fedprllm_layer(counts_pruned: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FedPrLLM's prune_fedprllm_layer, literally: threshold on -count, strict below, ties to fill.
    Returns (surely pruned, tied at the threshold) and checks the count it prunes."""
    metric = -counts_pruned.float()
    thresh = torch.sort(metric.flatten())[0][int(metric.numel() * level)]
    return metric < thresh, metric == thresh


def test_layer_aggregation_is_fedprllms(byte_tokenizer):
    model = tiny_model("llama", layers=2)
    clients = [sequential_wanda_masks(model, batches(byte_tokenizer, TEXTS[i::3], 32, 4), 0.5) for i in range(3)]
    got = federated.layer_count_masks(model, clients, 0.5, torch.Generator().manual_seed(0))
    other = federated.layer_count_masks(model, clients, 0.5, torch.Generator().manual_seed(1))
    for name, mask in got.items():
        pruned_by = sum((~m[name]).to(torch.int32) for m in clients)
        sure, tied = _fedprllm_layer(pruned_by, 0.5)
        n_pruned = int(mask.numel() * 0.5)
        assert int((~mask).sum()) == n_pruned                               # over the whole matrix, not per row
        assert (~mask)[sure].all() and mask[~sure & ~tied].all()            # the same weights wherever no tie
        assert int((~mask)[tied].sum()) == n_pruned - int(sure.sum())
    assert any(not torch.equal(got[n], other[n]) for n in got)              # ties are broken at random
    rows = federated.row_count_masks(model, clients, 0.5)
    assert any(not torch.equal(got[n], rows[n]) for n in got)               # and it is not the row-wise variant


def test_jaccard():
    assert federated.jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)
    assert federated.jaccard([], []) == 1.0
    assert math.isnan(federated.mean_pairwise([[1]], federated.jaccard))


# --------------------------------------------------------------------------- private selection

def test_record_block_influence_is_one_minus_adjacent_cosine_per_record(byte_tokenizer):
    model = tiny_model("llama", layers=4)
    stats = selection.record_block_influence(model, batches(byte_tokenizer, TEXTS[:5], 48, 5))
    assert stats.shape == (5, 4)
    for i, text in enumerate(TEXTS[:5]):
        alone = layer_similarity(model, list(batches(byte_tokenizer, [text], 48, 1)))
        np.testing.assert_allclose(stats[i], 1 - alone.adjacent, atol=1e-5)


def test_clipping_bounds_every_record():
    rows = np.array([[3.0, 4.0], [0.3, 0.4]])
    clipped, fraction = selection.clip_rows(rows, 1.0)
    np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), [1.0, 0.5])
    assert fraction == 0.5


def test_private_choice_without_noise_is_the_exact_mean_ranking():
    rng = np.random.default_rng(0)
    stats = rng.uniform(0, 0.1, size=(50, 8))
    reference = rng.uniform(0, 0.1, size=8)
    residual, _ = selection.clip_rows(stats - reference, 10.0)
    chosen = selection.private_choice(residual.sum(0), 50, reference, 3, 0.0, 10.0, None)
    assert chosen == sorted(np.argsort(stats.mean(0))[:3].tolist())
    # huge noise: choices vary across draws and are seeded
    draws = {tuple(selection.private_choice(residual.sum(0), 50, reference, 3, 1e3, 10.0,
                                            np.random.default_rng([0, d]))) for d in range(20)}
    assert len(draws) > 5
    again = selection.private_choice(residual.sum(0), 50, reference, 3, 1e3, 10.0, np.random.default_rng([0, 4]))
    assert again == selection.private_choice(residual.sum(0), 50, reference, 3, 1e3, 10.0,
                                             np.random.default_rng([0, 4]))


def test_selection_noise_is_calibrated_to_epsilon():
    delta = 1e-4
    for eps in (0.5, 2.0, 8.0):
        sigma = selection.noise_multiplier_for(eps, delta)
        assert selection.composed_epsilon([(sigma, 1.0, 1)], delta) == pytest.approx(eps, rel=2e-3)
    assert selection.noise_multiplier_for(math.inf, delta) == 0.0


def test_composition_of_two_gaussians_matches_the_closed_form():
    """RDP of Gaussians adds per order: σ1 then σ2 is one Gaussian with σ^-2 = σ1^-2 + σ2^-2."""
    delta, s1, s2 = 1e-5, 3.0, 2.0
    both = selection.composed_epsilon([(s1, 1.0, 1), (s2, 1.0, 1)], delta)
    single = selection.composed_epsilon([((s1 ** -2 + s2 ** -2) ** -0.5, 1.0, 1)], delta)
    assert both == pytest.approx(single, rel=1e-9)


def test_end_to_end_epsilon_of_a_real_run_composes_with_its_accountant(byte_tokenizer, tmp_path):
    model = tiny_model("llama", layers=2)
    texts = TEXTS * 2
    lora = LoRASpec(rank=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
    privacy = PrivacySpec(epsilon=3.0, delta=None, max_grad_norm=1.0, noise_multiplier=None, accountant="rdp")
    train = TrainSpec(epochs=1.0, learning_rate=2e-3, batch_size=8, physical_batch_size=4, max_length=32,
                      checkpoint_every=10, seed=0, noise="seeded")
    result = finetune(model, byte_tokenizer, texts, tmp_path / "run", lora, privacy, train, progress=False)
    r = result.privacy
    sel_sigma = selection.noise_multiplier_for(1.0, r.delta)
    c = selection.end_to_end_epsilon(sel_sigma, r.noise_multiplier, r.sample_rate, r.steps, r.delta)
    assert c.finetune_epsilon == pytest.approx(r.epsilon_rdp, rel=1e-9)      # the run's own accountant
    assert c.selection_epsilon == pytest.approx(1.0, rel=2e-3)
    assert max(c.selection_epsilon, c.finetune_epsilon) < c.end_to_end_epsilon < c.selection_epsilon + c.finetune_epsilon
    # more selection noise costs less; no selection noise means no guarantee
    quieter = selection.end_to_end_epsilon(sel_sigma * 4, r.noise_multiplier, r.sample_rate, r.steps, r.delta)
    assert c.finetune_epsilon < quieter.end_to_end_epsilon < c.end_to_end_epsilon
    assert math.isinf(selection.end_to_end_epsilon(0.0, r.noise_multiplier, r.sample_rate, r.steps,
                                                   r.delta).end_to_end_epsilon)
    prv = selection.end_to_end_epsilon(sel_sigma, r.noise_multiplier, r.sample_rate, r.steps, r.delta, "prv")
    assert prv.end_to_end_epsilon <= c.end_to_end_epsilon + 1e-6             # PRV is the tighter accountant


def test_matched_layer_count():
    model = tiny_model("llama", layers=6)
    k = baselines.matched_layer_count(model, 0.5)
    assert k == 3        # half of six identical layers' linear weights ≈ three whole layers


# --------------------------------------------------------------------------- the stage on a tiny model

@pytest.fixture
def tiny_profile():
    inf = float("inf")
    return prunepriv.load_profile("smoke", {
        "data": {"n_patients": 24, "n_audit_canaries": 4},
        "pruning": {"paper_remove": 2},
        "finetune": {"epsilons": [inf, 3.0], "batch_size": 8, "physical_batch_size": 4, "epochs": 0.3},
        "memorization": {"mia_samples": 4, "n_candidates": 4},
        "latency": {"repeats": 1, "warmup": 0, "new_tokens": 2, "prompt_length": 8},
        "baselines": {"n_clients": 3, "client_samples": 3, "selection_epsilons": [1.0, inf], "dpkd": True,
                      "magnitude": True, "dpimp": True, "sparsity": 0.5,
                      "selection_finetune": [1.0], "selection_draws": 3, "max_length": 32,
                      "batch_size": 4}})


def test_stage_06_on_a_tiny_model(byte_tokenizer, tmp_path, tiny_profile):
    model = tiny_model("llama", layers=6)
    corpus = prunepriv.corpus_for(tiny_profile)
    fed, summary = baselines.federated_pruning(model, byte_tokenizer, corpus, tiny_profile)
    assert set(fed["source"]) == {"centralized", "federated", baselines.ROW_VARIANT, "client 1", "client 2", "client 3"}
    assert set(fed[fed["method"].str.startswith("layer")]["source"]) == set(fed["source"]) - {baselines.ROW_VARIANT}
    assert summary["similarity_max_abs_difference"] < 1e-5
    assert summary["layer_choice"]["federated"] == summary["layer_choice"]["centralized"]

    sweep, info = baselines.selection_sweep(model, byte_tokenizer, corpus, tiny_profile)
    assert len(sweep) == 2 * 3 and sweep[sweep["selection_epsilon"] == math.inf]["same_layers"].all()
    chosen = baselines.selection_finetuning(model, byte_tokenizer, corpus, tiny_profile, sweep, tmp_path / "sel")
    private = chosen[chosen["selection_epsilon"] == 1.0].iloc[0]
    assert private["selection_epsilon_rdp"] == pytest.approx(1.0, rel=2e-3)
    assert private["finetune_epsilon_rdp"] < private["end_to_end_epsilon_rdp"] < 1.0 + private["finetune_epsilon_rdp"]

    sim = layer_similarity(model, list(batches(byte_tokenizer, corpus.texts("calibration")[:6], 32, 3)))
    table, meta = baselines.compression_baselines(model, byte_tokenizer, corpus, sim, tiny_profile, tmp_path / "comp")
    k = meta["matched_layers"]
    assert list(table["model"]) == ["dense", "magnitude 50%", "Wanda 50%", f"layer removal (k={k})",
                                   "DPIMP 50%", f"DPKD (k={k})"]
    sparse = table[table["model"].str.contains("%")]
    assert (sparse["base_zeros_after_finetuning"] > 0).all()          # LoRA trains beside the zeros, not into them
    single = table[~table["model"].str.startswith("DPKD")]
    assert (single["epsilon_rdp"] == single["epsilon_rdp"].iloc[0]).all()
    dpkd = table.set_index("model").loc[f"DPKD (k={k})"]               # teacher and student composed to the same ε
    assert dpkd["epsilon_rdp"] == pytest.approx(tiny_profile.baselines.epsilon, rel=0.02)
    assert dpkd["student_epsilon_rdp"] < dpkd["epsilon_rdp"] and dpkd["teacher_epsilon_rdp"] < dpkd["epsilon_rdp"]
    assert dpkd["audit_epsilon_rdp"] > table.set_index("model").loc["dense", "audit_epsilon_rdp"] * 0.95
    assert dpkd["parameter_fraction"] == table.set_index("model").loc[f"layer removal (k={k})", "parameter_fraction"]
    uses = json.loads((Path(dpkd["run_dir"]) / "privacy.json").read_text())["data_uses"]
    teacher_use = [u for u in uses if u["purpose"].startswith("DPKD teacher")]
    assert teacher_use and teacher_use[0]["epsilon"] == pytest.approx(dpkd["teacher_epsilon_rdp"])
    layer_row = table.set_index("model").loc[f"layer removal (k={k})"]
    assert layer_row["latency_matched_layers"] == pytest.approx(k)   # by construction: its own time per layer
    assert dpkd["prefill_ratio"] == layer_row["prefill_ratio"]        # same architecture, timed once
    assert table["parameter_fraction"].iloc[1:].between(0.4, 0.8).all()
    one_shot = table[table["model"].isin(["magnitude 50%", "Wanda 50%"])]
    assert (one_shot["deployed_parameter_fraction"] > one_shot["parameter_fraction"]).all()   # merged LoRA fills zeros
    dpimp_row = table.set_index("model").loc["DPIMP 50%"]
    assert dpimp_row["deployed_parameter_fraction"] == dpimp_row["parameter_fraction"]       # deployed as measured
    assert [r["reached"] for r in meta["dpimp_rounds"]][-1] == 0.5 and meta["dpimp_rounds"][-1]["deployed"]
    assert table["decode_ratio"].notna().all()


def test_each_strategy_is_healed_at_the_baselines_epsilon_and_reported(byte_tokenizer, tmp_path, tiny_profile):
    """Issue 15, item 4: every strategy's layers at the paper's depth, DP-healed alike; the paper's
    strategy reuses stage 03's run at that ε; claims, the paper's table, the figure and the findings."""
    profile = tiny_profile
    profile.baselines.heal_strategies = ["cosine", "last", "greedy-loss"]
    model = tiny_model("llama", layers=6)
    corpus = prunepriv.corpus_for(profile)
    pruning = pd.DataFrame({"strategy": ["cosine", "last", "greedy-loss", "cosine"], "removed": [2, 2, 2, 0],
                            "removed_layers": ["1 2", "4 5", "2 3", ""]})
    stage03 = FinetuneRun(model="pruned", target_epsilon=3.0, epsilon_rdp=2.99, epsilon_prv=2.5, delta=1e-5,
                          noise_multiplier=1.1, sample_rate=0.3, steps=2, perplexity_private_before=90.0,
                          perplexity_private=80.0, perplexity_private_low=70.0, perplexity_private_high=95.0,
                          run_dir="results/x/finetune/pruned-eps-3")
    runs = pd.DataFrame([stage03.to_row(), {**stage03.to_row(), "model": "unpruned"}])
    healed = healing.healed_strategies(model, byte_tokenizer, corpus, profile, pruning, runs, tmp_path / "heal", 6)
    assert list(healed["strategy"]) == ["cosine", "last", "greedy-loss"]
    rows = healed.set_index("strategy")
    assert rows.loc["cosine", "source"] == "stage 03" and rows.loc["cosine", "perplexity_private"] == 80.0
    for strategy, layers in (("last", "4 5"), ("greedy-loss", "2 3")):
        row = rows.loc[strategy]
        assert row["source"] == "stage 06" and row["removed_layers"] == layers
        assert row["epsilon_rdp"] == pytest.approx(3.0, rel=0.02)
        assert row["healing"] == pytest.approx(row["perplexity_private_before"] / row["perplexity_private"])
        assert row["perplexity_private_low"] <= row["perplexity_private"] <= row["perplexity_private_high"]
    assert "layer choice (greedy-loss)" in rows.loc["greedy-loss", "uncovered_uses"]   # private calibration split
    assert rows.loc["last", "uncovered_uses"] == ""                                     # reads no text

    chosen = {"strategy": "cosine", "removed": 2, "num_layers": 6}
    found = {c.id: c for c in claims._healing_claims({"pruning_healed.csv": healed, "pruned_layers.json": chosen})}
    assert found["healing.perplexity.cosine"].interval == (70.0, 95.0)
    assert not any(k.endswith(".over.paper") for k in found)        # stage 03's run left no per-record losses here
    paired = healed.assign(ratio_to_paper=[math.nan, 1.2, 0.9], ratio_to_paper_low=[math.nan, 1.1, 0.8],
                           ratio_to_paper_high=[math.nan, 1.3, 1.05])
    found = {c.id: c for c in claims._healing_claims({"pruning_healed.csv": paired, "pruned_layers.json": chosen})}
    assert found["healing.last.over.paper"].value == pytest.approx(1.2)
    assert found["healing.greedy-loss.over.paper"].interval == (0.8, 1.05) and "healing.cosine.over.paper" not in found
    table = paper.tables({**claims.load_tables(REFERENCE), "pruning_healed.csv": healed})["healing"]
    assert latex.problems(table) == [] and "greedy-loss" in table
    plots.pruning_healed(healed)
    text = findings.baselines({"similarity_max_abs_difference": 0.0, "layers_client_pairwise_jaccard": 1.0},
                              pd.DataFrame(), pd.DataFrame(), healed, "cosine")
    assert "cosine is ShortGPT's Block Influence" in text and "intervals" in text

    pruning_missing = pruning[pruning["strategy"] != "last"]
    with pytest.raises(PrunePrivError, match="no row for strategy 'last'"):
        healing.healed_strategies(model, byte_tokenizer, corpus, profile, pruning_missing, runs, tmp_path / "h2", 6)


def test_heal_strategies_must_be_swept_in_notebook_02():
    with pytest.raises(ConfigError, match="heal_strategies"):
        prunepriv.load_profile("smoke", {"pruning": {"strategies": ["cosine"]},
                                         "baselines": {"heal_strategies": ["cosine", "last"]}})
