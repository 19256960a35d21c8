"""Stage-level steps of notebook 06: the related systems, measured the same way.

* :func:`federated_pruning` — FedPrLLM (Guo et al. 2025): centralized,
  federated and local-only choices of layers (cosine similarity) and of
  Wanda masks, their agreement and perplexity (``tab:federated``).
* :func:`private_selection` — the layer choice made differentially private
  (:mod:`prunepriv.privacy.selection`) over a grid of selection ε, and DP-SGD
  fine-tuning of the privately pruned model with the end-to-end ε composed by
  the accountant (``tab:private-selection``).
* :func:`compression_baselines` — DP model compression as Mireshghallah,
  Backurs, Inan, Wutschitz and Kulkarni (NeurIPS 2022) define it: DPIMP
  (:mod:`prunepriv.compress.dpimp`) and DPKD (:mod:`prunepriv.compress.distill`),
  beside one-shot magnitude and Wanda sparsity then DP-LoRA, structural layer
  removal at a matched parameter count and the dense model, all at the same
  ε: perplexity, membership inference and the audit with their controls, deployed non-zeros,
  measured CPU latency and the layers removal would take out at that latency
  (``tab:compression-baselines``).
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prunepriv.attacks import probes as attacks
from prunepriv.attacks.audit import audit
from prunepriv.compress import dpimp, sparsity
from prunepriv.compress.distill import Distillation
from prunepriv.compress.latency import time_models
from prunepriv.compress.pruning import choose_layers, remove_layers
from prunepriv.compress.similarity import LayerSimilarity, layer_similarity
from prunepriv.compress.wanda import sequential_wanda_masks
from prunepriv.data import general_english
from prunepriv.lm.models import decoder_layers
from prunepriv.lm.text import batches
from prunepriv.privacy import federated, selection
from prunepriv.privacy.checkpoint import finished_run
from prunepriv.privacy.noise import noise_note, numpy_generator
from prunepriv.privacy.record import FinetuneRun, run_name
from prunepriv.privacy.specs import (
    PrivacySpec,
    check_privacy,
    finetune_specs,
    run_seed,
    split_noise_multiplier,
)
from prunepriv.privacy.train import finetune, plan_run
from prunepriv.privacy.uses import DataUse, record_use
from prunepriv.progress import tqdm
from prunepriv.results import atomic_write_json, relative_to_cwd
from prunepriv.stages.experiments import (
    Evaluator,
    calibration_texts,
    calibration_use,
    layer_choice_use,
    save_record_nll,
    timing_check,
)
from prunepriv.stages.memorization import (
    accountant_at,
    audit_scores,
    membership_texts,
    note_records,
)

# the columns of a fine-tuning run (a FinetuneRun) in the rows of tab:compression-baselines
RUN_COLUMNS = ("seed", "epsilon_rdp", "epsilon_prv", "delta", "noise_multiplier", "sample_rate", "steps",
               "perplexity_private_before", "perplexity_general_before", "perplexity_private", "perplexity_private_low",
               "perplexity_private_high", "perplexity_general", "train_seconds", "run_dir", "uncovered_uses")
# ... and in those of tab:private-selection
SELECTION_RUN_COLUMNS = ("delta", "noise_multiplier", "sample_rate", "steps", "perplexity_private_before",
                         "perplexity_private", "perplexity_general", "run_dir")


def _layers_text(layers) -> str:
    return " ".join(map(str, layers))


# --------------------------------------------------------------------------
# 1. federated pruning

ROW_VARIANT = "federated (row-wise, |W| ties)"


def wanda_sources(model, tokenizer, shards: list[list[str]], b, seed: int) -> dict[str, sparsity.Masks]:
    """Sequential Wanda masks: centralized (shards pooled), FedPrLLM's layer-wise aggregation of the
    clients' masks (ties drawn with ``seed``), its row-wise variant, and each client's own."""
    def wanda(texts: list[str]) -> sparsity.Masks:
        return sequential_wanda_masks(model, batches(tokenizer, texts, b.max_length, b.batch_size), b.sparsity)

    local = [wanda(shard) for shard in tqdm(shards, desc="client Wanda masks", leave=False)]
    return {"centralized": wanda([t for shard in shards for t in shard]),
            "federated": federated.layer_count_masks(model, local, b.sparsity, torch.Generator().manual_seed(seed)),
            ROW_VARIANT: federated.row_count_masks(model, local, b.sparsity),
            **{f"client {i + 1}": m for i, m in enumerate(local)}}


def federated_pruning(model, tokenizer, corpus, profile) -> tuple[pd.DataFrame, dict]:
    """FedPrLLM on ``n_clients`` shards of the training notes: one row per (method, source).

    Sources: ``centralized`` (shards pooled), ``federated`` (server
    aggregation of shared statistics: FedPrLLM's layer-wise count for Wanda
    masks, plus its row-wise variant as :data:`ROW_VARIANT`) and ``client i``
    (its own shard only). Every Wanda mask is sequential Wanda
    (:mod:`prunepriv.compress.wanda`).
    ``agreement`` is the Jaccard index of the removed layers (layer removal)
    or of the pruned weights (Wanda) with the centralized choice.
    """
    b, k = profile.baselines, profile.pruning.paper_remove
    num_layers = len(decoder_layers(model))
    shards = federated.client_shards(note_records(corpus, "train"), b.n_clients, b.client_samples, profile.seed)
    sims = [layer_similarity(model, list(batches(tokenizer, shard, b.max_length, b.batch_size)))
            for shard in tqdm(shards, desc="client similarity", leave=False)]
    pooled_texts = [t for shard in shards for t in shard]
    central_sim = layer_similarity(model, list(batches(tokenizer, pooled_texts, b.max_length, b.batch_size)))
    fed_sim = federated.average_similarity(sims)

    layer_choice = {"centralized": choose_layers("cosine", k, num_layers, central_sim),
                    "federated": choose_layers("cosine", k, num_layers, fed_sim)}
    layer_choice.update({f"client {i + 1}": choose_layers("cosine", k, num_layers, s) for i, s in enumerate(sims)})
    masks = wanda_sources(model, tokenizer, shards, b, profile.seed)

    evaluator = Evaluator(tokenizer, corpus, profile)
    rows, scored = [], {}
    for source, layers in tqdm(layer_choice.items(), desc="layer removal: perplexity", leave=False):
        key = tuple(layers)
        if key not in scored:
            pruned = remove_layers(copy.deepcopy(model), layers)
            scored[key] = {**evaluator.both(pruned), "nonzero_parameters": sparsity.nonzero_parameters(pruned)}
            del pruned
        rows.append({"method": f"layer removal (k={k})", "source": source, "removed": _layers_text(layers),
                     "agreement": federated.jaccard(layers, layer_choice["centralized"]), **scored[key]})
    for source, mask in tqdm(masks.items(), desc="Wanda: perplexity", leave=False):
        pruned = sparsity.sparsified(model, mask)
        rows.append({"method": f"Wanda {b.sparsity:.0%}", "source": source,
                     "removed": f"{sparsity.mask_sparsity(mask):.1%} of decoder linear weights",
                     "agreement": sparsity.mask_agreement(mask, masks["centralized"]), **evaluator.both(pruned),
                     "nonzero_parameters": sparsity.nonzero_parameters(pruned)})
        del pruned
    clients = [f"client {i + 1}" for i in range(b.n_clients)]
    summary = {
        "n_clients": b.n_clients, "records_per_client": [len(s) for s in shards],
        "tokens_per_client": [s.n_tokens for s in sims],
        "similarity_max_abs_difference": float(np.abs(fed_sim.matrix - central_sim.matrix).max()),
        "layers_client_pairwise_jaccard": federated.mean_pairwise([layer_choice[c] for c in clients], federated.jaccard),
        "wanda_client_pairwise_agreement": federated.mean_pairwise([masks[c] for c in clients],
                                                                   sparsity.mask_agreement),
        "layer_choice": layer_choice,
        "adjacent": {"centralized": central_sim.adjacent.tolist(), "federated": fed_sim.adjacent.tolist(),
                     **{c: s.adjacent.tolist() for c, s in zip(clients, sims)}},
    }
    return pd.DataFrame(rows), summary


# --------------------------------------------------------------------------
# 2. private layer selection

def selection_records(corpus, cfg, seed: int) -> list[str]:
    """The records whose statistics choose the layers: the training records that DP-SGD also uses."""
    texts = corpus.texts("train")
    if cfg.selection_samples and cfg.selection_samples < len(texts):
        texts = [texts[i] for i in sorted(np.random.default_rng(seed).choice(len(texts), cfg.selection_samples,
                                                                            replace=False))]
    return texts


def training_delta(profile, corpus) -> float:
    """The δ of the fine-tuning runs (profile's, or 1/(10 N)); selection and composition use the same δ."""
    lora, privacy, train = finetune_specs(profile)
    spec = replace(next(iter(privacy.values())), epsilon=profile.baselines.epsilon)
    return check_privacy(spec, len(corpus.texts("train")))


def selection_sweep(model, tokenizer, corpus, profile) -> tuple[pd.DataFrame, dict]:
    """Private choices of ``paper_remove`` layers for every selection ε and noise draw (:mod:`prunepriv.privacy.selection`).

    Under seeded noise (the research profiles) draw ``d`` uses the same standard
    normal vector at every ε (common random numbers), so the curves differ only
    by σ; under secure noise every draw is fresh (:mod:`prunepriv.privacy.noise`). ``agreement`` is the Jaccard
    index with the non-private choice on the same records; perplexity
    (held-out private text, before fine-tuning) is measured for the first
    ``baselines.selection_scored_draws`` draws of each ε.
    """
    b, k = profile.baselines, profile.pruning.paper_remove
    num_layers = len(decoder_layers(model))
    texts = selection_records(corpus, b, profile.seed)
    stats = selection.record_block_influence(model, tqdm(list(batches(tokenizer, texts, b.max_length, b.batch_size)),
                                                         desc="per-record Block Influence", leave=False))
    public = general_english(profile.data.general_passages, seed=profile.seed)
    reference = selection.record_block_influence(model, batches(tokenizer, public, b.max_length, b.batch_size)).mean(0)
    clipped, fraction = selection.clip_rows(stats - reference, b.selection_clip)
    total = clipped.sum(0)
    delta = training_delta(profile, corpus)

    def choose(sigma: float, rng) -> list[int]:
        return selection.private_choice(total, len(texts), reference, k, sigma, b.selection_clip, rng)

    non_private = choose(0.0, None)
    public_only = sorted(int(i) for i in np.argsort(reference, kind="stable")[:k])
    evaluator = Evaluator(tokenizer, corpus, profile)
    scored: dict[tuple[int, ...], float] = {}
    rows = []
    for eps in tqdm(b.selection_epsilons, desc="private selection", leave=False):
        sigma = selection.noise_multiplier_for(eps, delta)
        for draw in range(b.selection_draws):
            layers = choose(sigma, numpy_generator(profile.noise, profile.seed, draw))
            ppl = math.nan
            if draw < b.selection_scored_draws:
                if tuple(layers) not in scored:
                    pruned = remove_layers(copy.deepcopy(model), layers)
                    scored[tuple(layers)] = evaluator.private_ppl(pruned)
                    del pruned
                ppl = scored[tuple(layers)]
            rows.append({"selection_epsilon": eps, "selection_sigma": sigma, "draw": draw,
                         "removed": _layers_text(layers), "agreement": federated.jaccard(layers, non_private),
                         "same_layers": layers == non_private, "perplexity_private": ppl})
    info = {"records": len(texts), "noise": noise_note(profile.noise, profile.seed), "clip": b.selection_clip, "fraction_clipped": fraction, "delta": delta,
            "layers": num_layers, "removed": k, "non_private_choice": non_private,
            "public_reference_choice": public_only,
            "public_reference_agreement": federated.jaccard(public_only, non_private),
            "public_passages": len(public), "mean_block_influence": stats.mean(0).tolist(),
            "public_block_influence": reference.tolist(),
            "residual_norm_quantiles": np.quantile(np.linalg.norm(stats - reference, axis=1), [0.1, 0.5, 0.9]).tolist()}
    return pd.DataFrame(rows), info


def selection_frequencies(sweep: pd.DataFrame, num_layers: int) -> pd.DataFrame:
    """Fraction of draws removing each layer, one row per selection ε."""
    rows = []
    for eps, group in sweep.groupby("selection_epsilon", sort=False):
        choices = [[int(x) for x in s.split()] for s in group["removed"]]
        freq = selection.selection_frequencies(choices, num_layers)
        rows.append({"selection_epsilon": eps, **{f"layer_{i}": float(f) for i, f in enumerate(freq)}})
    return pd.DataFrame(rows)


def dp_finetune(base, tokenizer, corpus, profile, out: Path, evaluator: Evaluator, model_name: str,
                spec: PrivacySpec | None = None, loss=None, reuse: Path | None = None) -> tuple[FinetuneRun, object]:
    """DP-LoRA at ``baselines.epsilon`` (or ``spec``) of ``base`` (a model copy the caller owns), with the
    per-record ``loss`` of :func:`prunepriv.privacy.train.finetune`; returns the run and the tuned model.

    ``reuse``: another stage's finished run of the same settings, reloaded from its folder; if it is not
    one (its digest differs), this stage trains its own run in ``out`` and says so — it never writes into
    another stage's folder."""
    lora, privacy, train = finetune_specs(profile)
    spec = spec or replace(next(iter(privacy.values())), epsilon=profile.baselines.epsilon)
    texts = corpus.texts("train")
    if reuse is not None:
        out = reuse if reusable(base, texts, reuse, lora, spec, train) else out
    before = evaluator.measure(base)
    train = replace(train, seed=run_seed(train.seed, out.name))         # every run its own batches and noise
    result = finetune(base, tokenizer, texts, out, lora, spec, train, progress=True, loss=loss)
    tuned = result.model.eval()
    after = evaluator.measure(tuned)
    save_record_nll(out, before[1], after[1])                            # for paired comparisons between runs
    run = FinetuneRun.from_result(result, model=model_name, layers=len(decoder_layers(tuned.get_base_model())),
                                  target_epsilon=profile.baselines.epsilon, before=before[0],
                                  after=after[0], run_dir=relative_to_cwd(out), seed=train.seed)
    return run, tuned


def reusable(base, texts: list[str], folder: Path, lora, spec: PrivacySpec, train) -> bool:
    """Whether ``folder`` holds a finished run of exactly these settings (else a warning names both digests)."""
    plan = plan_run(base, texts, folder, lora, spec, replace(train, seed=run_seed(train.seed, folder.name)))
    if finished_run(plan.output_dir, plan.digest) is not None:
        return True
    found = json.loads((folder / "run.json").read_text()).get("digest") if (folder / "run.json").is_file() else None
    warnings.warn(f"{folder} is not a finished run of these settings (digest {plan.digest[:12]}, found "
                  f"{(found or 'none')[:12]}): trained again in this stage's own folder")
    return False


def selection_finetuning(model, tokenizer, corpus, profile, sweep: pd.DataFrame, runs_dir) -> pd.DataFrame:
    """Fine-tune the privately pruned model (draw 0) of each ``selection_finetune`` ε (``.inf``: the non-private
    choice on the same clipped statistics).

    ``end_to_end_epsilon_*`` composes the selection's Gaussian release with
    the run's DP-SGD history in one accountant, at the run's δ.
    """
    b = profile.baselines
    evaluator = Evaluator(tokenizer, corpus, profile)
    rows, done = [], {}
    for eps in tqdm(list(b.selection_finetune), desc="fine-tuning privately pruned models", leave=False):
        picked = sweep[(sweep["selection_epsilon"] == eps) & (sweep["draw"] == 0)].iloc[0]
        sigma, layers = float(picked["selection_sigma"]), [int(x) for x in picked["removed"].split()]
        key = tuple(layers)
        if key not in done:
            name = f"removed-{'-'.join(map(str, layers))}"
            pruned = remove_layers(copy.deepcopy(model), layers)
            record_use(pruned, DataUse("layer choice (private selection)", "training records (private)",
                                       len(selection_records(corpus, b, profile.seed)), private=True,
                                       epsilon=eps if math.isfinite(eps) else None))
            run, tuned = dp_finetune(pruned, tokenizer, corpus, profile, Path(runs_dir) / run_name(name, b.epsilon),
                                       evaluator, name)
            done[key] = run
            del tuned
        run = done[key]
        rdp = selection.end_to_end_epsilon(sigma, run.noise_multiplier, run.sample_rate, run.steps, run.delta, "rdp")
        prv = selection.end_to_end_epsilon(sigma, run.noise_multiplier, run.sample_rate, run.steps, run.delta, "prv")
        rows.append({"selection_epsilon": eps, "selection_sigma": sigma, "removed": _layers_text(layers),
                     "selection_epsilon_rdp": rdp.selection_epsilon, "finetune_epsilon": b.epsilon,
                     "finetune_epsilon_rdp": rdp.finetune_epsilon,
                     "end_to_end_epsilon_rdp": rdp.end_to_end_epsilon, "end_to_end_epsilon_prv": prv.end_to_end_epsilon,
                     **run.to_row(SELECTION_RUN_COLUMNS)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# 3. One-shot sparsity then DP-LoRA (stand-in for DP model compression, Mireshghallah et al. 2022)

def matched_layer_count(model, sparsity_level: float) -> int:
    """Layers whose removal takes away about as many parameters as ``sparsity_level`` of the decoder's linear weights."""
    linears = sparsity.prunable_linears(model)
    target = sparsity_level * sum(m.weight.numel() for m in linears.values())
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in decoder_layers(model)]
    mean = float(np.mean(per_layer))
    return int(min(len(per_layer) - 1, max(1, round(target / mean))))


def compressed_models(model, tokenizer, corpus, similarity: LayerSimilarity, profile) -> tuple[dict, dict]:
    """The dense model, magnitude and Wanda sparsity, and layer removal at a matched parameter count."""
    b = profile.baselines
    texts = calibration_texts(profile, corpus, profile.similarity.n_samples)
    wanda = sequential_wanda_masks(model, batches(tokenizer, texts, b.max_length, b.batch_size), b.sparsity)
    k = matched_layer_count(model, b.sparsity)
    layers = choose_layers("cosine", k, len(decoder_layers(model)), similarity)
    models = {"dense": model}
    if b.magnitude:
        models[f"magnitude {b.sparsity:.0%}"] = sparsity.sparsified(model, sparsity.magnitude_masks(model, b.sparsity))
    models[f"Wanda {b.sparsity:.0%}"] = sparsity.sparsified(model, wanda)
    models[f"layer removal (k={k})"] = remove_layers(copy.deepcopy(model), layers)
    record_use(models[f"Wanda {b.sparsity:.0%}"], calibration_use(profile, "Wanda masks (sequential)", len(texts)))
    record_use(models[f"layer removal (k={k})"], layer_choice_use(profile, "cosine", similarity.n_sequences))
    info = {"matched_layers": k, "removed_layers": layers, "wanda_calibration_records": len(texts),
            "layer_removal": f"layer removal (k={k})"}
    return models, info


def memorization_probe(tuned, untuned, tokenizer, corpus, cfg, seed: int, run: FinetuneRun) -> dict:
    """Membership inference and the one-run audit, each with its control: training versus held-out records
    (AUC 0.5 by chance; the same members and non-members as notebook 05) and the audit's ε lower bound
    beside the accountant's ε. Canary exposure, which ranks every canary among its candidates under both
    the tuned and the untuned model, is notebook 05's alone: here it would cost more than the runs."""
    bs, ml = cfg.batch_size, cfg.max_length
    members, nonmembers = membership_texts(corpus, cfg.mia_samples, seed)
    texts = members + nonmembers
    windows = attacks.scored_texts(tokenizer, texts, ml)
    mia = attacks.membership_inference(windows[:len(members)], windows[len(members):],
                                       attacks.record_logprobs(tuned, tokenizer, texts, ml, bs),
                                       attacks.record_logprobs(untuned, tokenizer, texts, ml, bs), cfg.min_k)
    by_attack = {m["attack"]: m for m in mia}
    out = {"mia_auc_loss": by_attack["loss"]["auc"], "mia_auc_reference": by_attack["reference"]["auc"],
           "mia_auc_reference_low": by_attack["reference"]["auc_low"],
           "mia_auc_reference_high": by_attack["reference"]["auc_high"]}
    canaries = corpus.canaries_for("audit")
    if canaries:
        scores = audit_scores(tuned, tokenizer, canaries, bs)
        result = audit(scores, [c.in_train for c in canaries], cfg.audit_delta, cfg.audit_confidence)
        accountant = accountant_at(run, cfg.audit_delta)
        out.update({"audit_lower_bound": result.epsilon_lower_bound, "audit_attainable": result.epsilon_attainable,
                    "audit_epsilon_rdp": accountant["epsilon_rdp"], "audit_delta": cfg.audit_delta})
    return out


def compression_baselines(model, tokenizer, corpus, similarity: LayerSimilarity, profile, runs_dir,
                          dense_run_dir: Path | None = None,
                          pruned_run: tuple[list[int], Path] | None = None) -> tuple[pd.DataFrame, dict]:
    """``tab:compression-baselines``: every compressed model, DP-LoRA at the same ε, measured alike, and
    DPIMP (:mod:`prunepriv.compress.dpimp`), which prunes during that DP fine-tuning.

    ``dense_run_dir``: where the dense model's run at this ε already lives (stage 03), and ``pruned_run``
    the layers and folder of stage 03's pruned run at this ε: when the matched layer removal removes those
    very layers (``baselines.sparsity`` matched to ``pruning.paper_remove``), it is that run, reloaded rather
    than trained again. Latency is measured after training, interleaved over the models as deployed (the
    one-shot rows' sparse weights, DPIMP's final model).
    """
    b, lat = profile.baselines, profile.latency
    models, info = compressed_models(model, tokenizer, corpus, similarity, profile)
    evaluator = Evaluator(tokenizer, corpus, profile)
    rows, timed = [], {}
    for name, base in tqdm(models.items(), desc="compression baselines", leave=False):
        slug = name.split(" ")[0].lower() if name != "dense" else "dense"
        reuse = Path(dense_run_dir) if name == "dense" and dense_run_dir else None
        if name == info["layer_removal"] and pruned_run is not None and list(pruned_run[0]) == list(info["removed_layers"]):
            reuse = Path(pruned_run[1])
        run, tuned = dp_finetune(copy.deepcopy(base), tokenizer, corpus, profile,
                                 Path(runs_dir) / run_name(slug, b.epsilon), evaluator, name, reuse=reuse)
        probe = memorization_probe(tuned, base, tokenizer, corpus, profile.memorization, profile.seed, run)
        rows.append(_compression_row(name, base, tuned.get_base_model(), sparsity.nonzero_parameters(
            copy.deepcopy(tuned).merge_and_unload()), run, probe, model, b.epsilon))
        timed[name] = base
        del tuned
    if b.dpimp:
        name = f"DPIMP {b.sparsity:.0%}"
        run, deployed, info["dpimp_rounds"] = _dpimp_run(model, tokenizer, corpus, profile,
                                                         Path(runs_dir) / run_name("dpimp", b.epsilon), evaluator, name)
        probe = memorization_probe(deployed, model, tokenizer, corpus, profile.memorization, profile.seed, run)
        rows.append(_compression_row(name, deployed, deployed, sparsity.nonzero_parameters(deployed), run, probe,
                                     model, b.epsilon))
        timed[name] = deployed
    timing = time_models(timed, prompt_length=lat.prompt_length, new_tokens=lat.new_tokens,
                         repeats=lat.repeats, warmup=lat.warmup, seed=profile.seed)
    if b.dpkd:                           # the student is the layer-removed model: its timing is that row's
        name = f"DPKD (k={info['matched_layers']})"
        student = copy.deepcopy(models[info["layer_removal"]])
        row, info["dpkd"] = _dpkd_row(model, student, tokenizer, corpus, profile, Path(runs_dir), evaluator, name)
        rows.append(row)
        timing[name] = timing[info["layer_removal"]]
    ideal = {info["layer_removal"]: 1 - info["matched_layers"] / len(decoder_layers(model))}
    if b.dpkd:                           # the same timings, so the same FLOP-ideal
        ideal[name] = ideal[info["layer_removal"]]
    _add_latency(rows, timing, info["layer_removal"], info["matched_layers"], ideal)
    info["latency_device"] = str(next(model.parameters()).device)
    return pd.DataFrame(rows), info


def _add_latency(rows: list[dict], times: dict[str, list[tuple[float, float]]], layer_removal: str,
                 matched_layers: int, ideal: dict[str, float]) -> None:
    """Each row's measured latency relative to dense (medians of the interleaved repeats, the paired ratios'
    spread, and whether the timing can be a claim: :func:`prunepriv.stages.experiments.timing_check`, the
    ideal being the layer count's ratio for layer removal and 1 for sparse weights on dense kernels), and
    ``latency_matched_layers``: how many layers removal would take out for the same prefill time (from the
    layer-removal row's measured time per layer). Dense kernels give unstructured sparsity no speed, so its
    sparse rows match about 0 layers: at matched latency they compete with the dense model, not with layer
    removal."""
    dense = times["dense"]
    for row in rows:
        mine = times[row["model"]]
        notes = []
        for i, part in enumerate(("prefill", "decode")):
            ratios = [a[i] / b[i] for a, b in zip(mine, dense)]
            row.update({f"{part}_ratio": float(np.median([a[i] for a in mine]) / np.median([b[i] for b in dense])),
                        f"{part}_s": float(np.median([a[i] for a in mine])),
                        f"{part}_ratio_sd": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else math.nan,
                        f"{part}_repeats": len(ratios)})
            if row["model"] != "dense":
                notes.append(timing_check(ratios, ideal.get(row["model"], 1.0), [b[i] for b in dense],
                                          [a[i] for a in mine]))
        row["timing_note"] = "; ".join(n for n in notes if n)
    removal = next(r for r in rows if r["model"] == layer_removal)
    per_layer = (1.0 - removal["prefill_ratio"]) / matched_layers
    for row in rows:
        row["latency_matched_layers"] = (1.0 - row["prefill_ratio"]) / per_layer if per_layer > 0 else math.nan


def _dpkd_row(model, student, tokenizer, corpus, profile, runs_dir: Path, evaluator: Evaluator,
              name: str) -> tuple[dict, dict]:
    """DPKD (:mod:`prunepriv.compress.distill`): a DP teacher (the dense model) distilled into ``student``
    (the layer-removed model, a copy the caller owns) under DP-SGD, the two runs' σ set so that together
    they reach ``baselines.epsilon``; the row's ε is that composition (the teacher is a use of the
    training records that the student's own ε does not cover), and so is the audit's accountant."""
    b = profile.baselines
    lora, privacy, train = finetune_specs(profile)
    base = replace(next(iter(privacy.values())), epsilon=b.epsilon)
    n = len(corpus.texts("train"))
    spec = replace(base, noise_multiplier=split_noise_multiplier(base, train, n, runs=2))
    teacher_dir = runs_dir / run_name("dpkd-teacher", b.epsilon)
    teacher_run, teacher = dp_finetune(copy.deepcopy(model), tokenizer, corpus, profile, teacher_dir, evaluator,
                                       "DPKD teacher", spec)
    record_use(student, DataUse("DPKD teacher's soft labels (its own DP-SGD run on these records)",
                                "training records (private)", n, private=True, epsilon=teacher_run.epsilon_rdp))
    loss = Distillation(teacher.eval(), b.dpkd_alpha, b.dpkd_temperature,
                        json.loads((teacher_dir / "run.json").read_text())["digest"])
    run, tuned = dp_finetune(copy.deepcopy(student), tokenizer, corpus, profile, runs_dir / run_name("dpkd", b.epsilon),
                             evaluator, name, spec, loss)
    history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in (teacher_run, run)]
    composed = replace(run, epsilon_rdp=selection.composed_epsilon(history, run.delta, "rdp"),
                       epsilon_prv=selection.composed_epsilon(history, run.delta, "prv"))
    # identical σ and q: the two histories compose exactly as one run of their summed steps
    audited = replace(composed, steps=teacher_run.steps + run.steps)
    probe = memorization_probe(tuned, student, tokenizer, corpus, profile.memorization, profile.seed, audited)
    row = _compression_row(name, student, tuned.get_base_model(),
                           sparsity.nonzero_parameters(copy.deepcopy(tuned).merge_and_unload()), composed, probe,
                           model, b.epsilon)
    info = {"teacher_run_dir": teacher_run.run_dir, "teacher_epsilon_rdp": teacher_run.epsilon_rdp,
            "student_epsilon_rdp": run.epsilon_rdp, "noise_multiplier": spec.noise_multiplier,
            "teacher_perplexity_private": teacher_run.perplexity_private, "alpha": b.dpkd_alpha,
            "temperature": b.dpkd_temperature}
    row.update({"teacher_epsilon_rdp": teacher_run.epsilon_rdp, "student_epsilon_rdp": run.epsilon_rdp})
    return row, info


def _compression_row(name: str, base, tuned_base, deployed_nonzero: int, run: FinetuneRun, probe: dict, dense,
                     epsilon: float) -> dict:
    """One row of ``tab:compression-baselines`` (latency columns are added once every model is timed).

    ``parameter_fraction``: non-zeros of the compressed weights before fine-tuning, relative to dense;
    ``deployed_parameter_fraction``: after the LoRA update is merged into them (it fills zeros in the
    adapted matrices), the model that would actually ship.
    """
    dense_params = sparsity.nonzero_parameters(dense)
    nonzero = sparsity.nonzero_parameters(base)
    base_zeros = sum(int((m.weight == 0).sum()) for m in sparsity.prunable_linears(tuned_base).values())
    return {"model": name, "nonzero_parameters": nonzero, "parameter_fraction": nonzero / dense_params,
            "deployed_parameter_fraction": deployed_nonzero / dense_params,
            "base_zeros_after_finetuning": base_zeros, "prefill_ratio": math.nan, "decode_ratio": math.nan,
            "prefill_s": math.nan, "decode_s": math.nan, "target_epsilon": epsilon,
            **run.to_row(RUN_COLUMNS), **probe}


def _dpimp_run(model, tokenizer, corpus, profile, out: Path, evaluator: Evaluator,
               name: str) -> tuple[FinetuneRun, object, list[dict]]:
    """DPIMP at ``baselines.epsilon`` from the dense ``model`` (copied): the run, the deployed sparse model
    and the rounds (written to ``out/dpimp.json``, beside the adapter, which alone is not the model)."""
    b = profile.baselines
    lora, privacy, train = finetune_specs(profile)
    spec = replace(next(iter(privacy.values())), epsilon=b.epsilon)
    hook = dpimp.DPIMP(b.dpimp_rounds, b.sparsity)
    before = evaluator.both(model)
    train = replace(train, seed=run_seed(train.seed, out.name))
    result = finetune(copy.deepcopy(model), tokenizer, corpus.texts("train"), out, lora, spec, train, progress=True,
                      after_step=hook)
    deployed, reached = dpimp.deploy(result.model, b.sparsity)
    deployed.eval()
    rounds = [*hook.history, {"step": result.privacy.steps, "sparsity": b.sparsity, "reached": reached,
                              "deployed": True}]
    atomic_write_json(out / "dpimp.json", {"rounds": rounds, "note": "adapter/ holds the last round's LoRA weights "
                                           "only: the frozen weights were pruned during training"})
    run = FinetuneRun.from_result(result, model=name, layers=len(decoder_layers(deployed)),
                                  target_epsilon=b.epsilon, before=before, after=evaluator.both(deployed),
                                  run_dir=relative_to_cwd(out), seed=train.seed)
    return run, deployed, rounds


def stage03_run(runs: pd.DataFrame | None, model: str, epsilon: float) -> FinetuneRun | None:
    """Stage 03's first run (replicate 0) of ``model`` at ``epsilon`` in its table ``runs``, if it exists."""
    if runs is None:
        return None
    match = runs[(runs["model"] == model) & (runs["target_epsilon"] == epsilon)]
    if "replicate" in match:
        match = match[match["replicate"] == 0]
    return FinetuneRun.from_row(match.iloc[0]) if len(match) else None


def dense_run_dir(runs: pd.DataFrame | None, epsilon: float, model: str = "unpruned") -> Path | None:
    """Stage 03's run folder of ``model`` (the unpruned one by default) at ``epsilon`` in its table ``runs``,
    if that run exists."""
    run = stage03_run(runs, model, epsilon)
    return Path(run.run_dir) if run is not None else None
