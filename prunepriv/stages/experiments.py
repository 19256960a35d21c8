"""Stage-level steps that the notebooks call (01 similarity, 02 pruning)."""
from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunepriv.compress.latency import time_models
from prunepriv.compress.pruning import (
    check_count,
    choose_layers,
    greedy_loss_order,
    remove_layers,
)
from prunepriv.compress.similarity import LayerSimilarity, layer_similarity
from prunepriv.data import Corpus, general_english, public_calibration
from prunepriv.lm.evaluation import perplexity, perplexity_interval, score_records
from prunepriv.lm.lora import load_adapter, merge_and_save
from prunepriv.lm.models import decoder_layers, load_model
from prunepriv.lm.precision import precision_of
from prunepriv.lm.text import batches
from prunepriv.privacy.record import (
    FinetuneRun,
    base_model,
    is_matched,
    matched_name,
    run_name,
    runs_of,
)
from prunepriv.privacy.specs import (
    LoRASpec,
    PrivacySpec,
    TrainSpec,
    epsilon_label,
    finetune_specs,
    nonprivate_lora,
    nonprivate_train,
    run_seed,
)
from prunepriv.privacy.stopping import StopRule
from prunepriv.privacy.train import finetune
from prunepriv.privacy.uses import DataUse, record_use
from prunepriv.progress import tqdm
from prunepriv.results import atomic_write_text, relative_to_cwd

DATA_STRATEGIES = ("cosine", "block", "greedy-loss")      # strategies that read calibration text


def calibration_texts(profile, corpus, n: int) -> list[str]:
    """Up to ``n`` texts that choose layers, SLEB's order and Wanda's masks (``data.calibration``):
    general English passages disjoint from every general-English evaluation passage (``public``),
    or the records of the private calibration split, canaries never among them (``private``)."""
    if profile.data.calibration == "public":
        return public_calibration(n, profile.seed)
    texts = corpus.texts("calibration", include_canaries=False)
    if len(texts) < n:
        warnings.warn(f"only {len(texts)} calibration records available (asked for {n})")
    return texts[:n]


def calibration_use(profile, purpose: str, records: int) -> DataUse:
    """The :class:`~prunepriv.privacy.uses.DataUse` of ``records`` calibration texts for ``purpose``."""
    if profile.data.calibration == "public":
        return DataUse(purpose, "general English passages (public)", records, private=False)
    where = "synthetic clinical notes" if profile.data.source == "synthetic" else Path(profile.data.source).name
    return DataUse(purpose, f"the calibration split of {where} (private)", records, private=True)


def layer_choice_use(profile, strategy: str, records: int) -> DataUse | None:
    """The data use of choosing layers with ``strategy`` (``None``: the strategy reads no text)."""
    if strategy not in DATA_STRATEGIES:
        return None
    return calibration_use(profile, f"layer choice ({strategy})", records)


def paper_choice_use(profile, similarity: LayerSimilarity, greedy_records: int) -> dict | None:
    """What chose the paper's pruned layers (saved with them by notebook 02): the calibration texts of
    the layer similarity (``cosine``, ``block``) or of SLEB's search (``greedy-loss``)."""
    strategy = profile.pruning.paper_strategy
    records = greedy_records if strategy == "greedy-loss" else similarity.n_sequences
    use = layer_choice_use(profile, strategy, records)
    return None if use is None else asdict(use)


def decision_model(profile, model):
    """The model that makes decisions from data — which layers to remove (stage 01, federated and private
    selection), which weights Wanda keeps: ``model`` when it computes in fp32, else the profile's model
    loaded in fp32. bf16 rounding (about 1e-3) exceeds the gap between near-tied layers, so a bf16 and an
    fp32 machine would decide differently from the same text; measured in fp32, they decide alike."""
    if precision_of(model) == "fp32":
        return model
    return load_model(profile.model, device=profile.device, precision="fp32")[0].eval()


def measure_similarity(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> LayerSimilarity:
    """Layer similarity of ``model`` on ``texts`` (notebook 01)."""
    return layer_similarity(model, tqdm(list(batches(tokenizer, texts, max_length, batch_size)),
                                        desc="layer similarity", leave=False))


def choice_stability(sim: LayerSimilarity, strategy: str, k: int, draws: int = 200, seed: int = 0) -> dict:
    """How stable the paper's layer choice is under a bootstrap of the calibration sequences: how often
    each layer is chosen, how often the very set chosen, and the gap between the ``k``-th and the next
    most similar layer (a near-tie decides the set by chance). Only for ``cosine``; ``None`` fields
    otherwise (and for statistics saved without per-sequence sums)."""
    out: dict = {"strategy": strategy, "draws": draws, "same_set": None, "layer_frequency": None, "margin": None}
    if strategy != "cosine" or sim.sequence_adjacent is None or k == 0:
        return out
    chosen = choose_layers("cosine", k, sim.num_layers, sim)
    counts, same = np.zeros(sim.num_layers), 0
    for adjacent in sim.resampled_adjacent(draws, seed):
        layers = sorted(int(i) for i in np.argsort(-adjacent, kind="stable")[:k])
        counts[layers] += 1
        same += layers == chosen
    ranked = np.sort(sim.adjacent)[::-1]
    margin = float(ranked[k - 1] - ranked[k]) if k < sim.num_layers else None
    return {**out, "same_set": same / draws, "layer_frequency": (counts / draws).round(4).tolist(), "margin": margin}


def similarity_table(sim: LayerSimilarity) -> pd.DataFrame:
    """One row per layer: adjacent cosine, Block Influence, rank for removal."""
    frame = pd.DataFrame({
        "layer": range(sim.num_layers),
        "adjacent_cosine": sim.adjacent,
        "block_influence": sim.block_influence,
        "angular_distance_n1": sim.block[0, : sim.num_layers],
    })
    frame["cosine_removal_rank"] = frame["adjacent_cosine"].rank(ascending=False, method="first").astype(int)
    return frame


def removal_plans(strategies: list[str], ks: list[int], num_layers: int, similarity: LayerSimilarity,
                  seed: int, greedy_order: list[int] | None = None) -> dict[str, dict[int, list[int]]]:
    """Layers each strategy removes for each ``k``."""
    for k in ks:
        check_count(k, num_layers)
    return {
        s: {k: choose_layers(s, k, num_layers, similarity, seed, greedy_order) for k in ks}
        for s in strategies
    }


def greedy_depth(profile) -> int:
    """How many greedy (SLEB) removals a profile needs; 0 when no stage uses greedy-loss."""
    p = profile.pruning
    needed = "greedy-loss" in p.strategies or p.paper_strategy == "greedy-loss"
    return max([*p.remove, *profile.latency.remove, p.paper_remove]) if needed else 0


def greedy_order_for(model, tokenizer, texts: list[str], k: int, max_length: int, batch_size: int):
    """SLEB removal order on calibration texts (empty when ``k`` is 0)."""
    if k == 0:
        return [], []
    calib = list(batches(tokenizer, texts, max_length, batch_size))
    return greedy_loss_order(model, calib, k)


def perplexity_sweep(model, tokenizer, plans: dict[str, dict[int, list[int]]], private_texts: list[str],
                     general_texts: list[str], max_length: int, batch_size: int,
                     clusters: list[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Perplexity of every (strategy, k) pruned model on private and general text, the private one with
    its 95% bootstrap interval over ``clusters`` (the records' patients; each record its own without).

    Each point is a real structurally pruned copy of ``model``; identical
    removal sets are evaluated once.
    """
    num_layers = len(decoder_layers(model))
    total_params = sum(p.numel() for p in model.parameters())
    clusters = clusters or [str(i) for i in range(len(private_texts))]
    cache: dict[tuple[int, ...], tuple[float, float, float, float, int]] = {}
    rows = []
    jobs = [(s, k, layers) for s, by_k in plans.items() for k, layers in by_k.items()]
    for strategy, k, layers in tqdm(jobs, desc="perplexity vs layers removed", leave=False):
        key = tuple(layers)
        if key not in cache:
            pruned = remove_layers(copy.deepcopy(model), layers) if layers else model
            scores = score_records(pruned, tokenizer, private_texts, max_length, batch_size)
            cache[key] = (scores.perplexity, *perplexity_interval(scores, clusters, seed=seed),
                          perplexity(pruned, tokenizer, general_texts, max_length, batch_size),
                          sum(p.numel() for p in pruned.parameters()))
            del pruned
        private, low, high, general, params = cache[key]
        rows.append({
            "strategy": strategy, "removed": k, "layers_left": num_layers - k,
            "removed_layers": " ".join(map(str, layers)), "parameters": params,
            "parameter_fraction": params / total_params,
            "perplexity_private": private, "perplexity_private_low": low, "perplexity_private_high": high,
            "perplexity_general": general,
        })
    return pd.DataFrame(rows)


TIMING_SPREAD = 1.25    # a model's slowest repeat over its fastest: above this the machine was not idle
IDEAL_SLACK = 0.95     # a measured ratio below 0.95 × (L − K) / L is impossible for layer removal: load


def timing_check(ratios: list[float], ideal: float, base: list[float], small: list[float]) -> str:
    """Why a latency point cannot be a claim (``""`` when it can): the timed repeats of either model spread
    by more than :data:`TIMING_SPREAD` (another process shared the cores), or a pruned / unpruned ratio
    fell below the FLOP-ideal (L − K) / L (impossible: the embeddings and LM head do not shrink), which
    only a slowed-down unpruned timing produces."""
    reasons = []
    for name, times in (("unpruned", base), ("pruned", small)):
        if min(times) > 0 and max(times) / min(times) > TIMING_SPREAD:
            reasons.append(f"{name} repeats spread ×{max(times) / min(times):.2f}")
    if min(ratios) < IDEAL_SLACK * ideal:
        reasons.append(f"a ratio of {min(ratios):.2f} is below the ideal {ideal:.2f}")
    return "; ".join(reasons)


def latency_sweep(model, layers_for_k: dict[int, list[int]], prompt_length: int, new_tokens: int,
                  repeats: int, warmup: int, seed: int = 0) -> pd.DataFrame:
    """Prefill/decode latency of pruned copies, each timed against the unpruned model (interleaved). Each
    row says whether the timing can be a claim (``timing_valid``, :func:`timing_check`): a timing taken
    while the machine was busy is reported, never claimed."""
    num_layers = len(decoder_layers(model))
    rows = []
    for k, layers in tqdm(sorted(layers_for_k.items()), desc="latency vs layers removed", leave=False):
        pruned = remove_layers(copy.deepcopy(model), layers) if layers else copy.deepcopy(model)
        times = time_models({"unpruned": model, "pruned": pruned}, prompt_length=prompt_length,
                            new_tokens=new_tokens, repeats=repeats, warmup=warmup, seed=seed)
        del pruned
        base = {part: [t[i] for t in times["unpruned"]] for i, part in enumerate(("prefill", "decode"))}
        small = {part: [t[i] for t in times["pruned"]] for i, part in enumerate(("prefill", "decode"))}
        row = {"removed": k, "layers_left": num_layers - k}
        ideal = (num_layers - k) / num_layers
        problems = []
        for part, count in (("prefill", prompt_length), ("decode", new_tokens)):
            median_small, median_base = float(np.median(small[part])), float(np.median(base[part]))
            ratios = [a / b for a, b in zip(small[part], base[part])]
            row.update({f"{part}_s": median_small, f"{part}_tokens_per_s": count / median_small,
                        f"{part}_ratio": median_small / median_base,
                        f"{part}_ratio_low": min(ratios), f"{part}_ratio_high": max(ratios),
                        f"{part}_ratio_sd": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else math.nan,
                        f"{part}_repeats": len(ratios)})
            if k:
                problems.append(timing_check(ratios, ideal, base[part], small[part]))
        row["ideal_ratio"] = ideal
        row["timing_note"] = "; ".join(p for p in problems if p)
        row["timing_valid"] = not row["timing_note"]
        rows.append(row)
    return pd.DataFrame(rows)


class Evaluator:
    """The one evaluation protocol of every model in stages 03 and 06: ``finetune.eval_samples`` held-out
    private records and ``data.general_passages`` general English passages, scored at
    ``finetune.max_length`` tokens, so that an adapter has one perplexity wherever it is reported. The
    private perplexity carries a 95% bootstrap interval over patients (a patient's notes are not
    independent; a record without a patient is its own cluster)."""

    def __init__(self, tokenizer, corpus, profile) -> None:
        f = profile.finetune
        self.tokenizer, self.max_length, self.batch_size = tokenizer, f.max_length, f.physical_batch_size
        records = corpus.records("heldout", limit=f.eval_samples, include_canaries=False)
        self.private = [r.text for r in records]
        self.clusters = [r.patient or r.id for r in records]
        self.general = general_english(profile.data.general_passages, seed=profile.seed)
        self.seed = profile.seed
        self.match = self.private[: f.match_samples or None]     # what a utility-matched run checks each step

    def measure(self, model) -> tuple[dict[str, float], pd.DataFrame]:
        """Both perplexities, the private one's interval, and every record's NLL (a table)."""
        private = score_records(model, self.tokenizer, self.private, self.max_length, self.batch_size)
        general = score_records(model, self.tokenizer, self.general, self.max_length, self.batch_size)
        low, high = perplexity_interval(private, self.clusters, seed=self.seed)
        records = pd.DataFrame({"split": ["private"] * len(self.private) + ["general"] * len(self.general),
                                "cluster": self.clusters + [f"passage-{i}" for i in range(len(self.general))],
                                "tokens": np.concatenate([private.tokens, general.tokens]).astype(int),
                                "nll": np.concatenate([private.nll, general.nll])})
        return {"perplexity_private": private.perplexity, "perplexity_general": general.perplexity,
                "perplexity_private_low": low, "perplexity_private_high": high}, records

    def both(self, model) -> dict[str, float]:
        """Both perplexities and the private one's interval."""
        return self.measure(model)[0]

    def private_ppl(self, model) -> float:
        """The private perplexity alone."""
        return perplexity(model, self.tokenizer, self.private, self.max_length, self.batch_size)

    def match_ppl(self, model) -> float:
        """The perplexity on the first ``finetune.match_samples`` evaluation records: what a utility-matched
        run checks after every step (all of them when 0), the target measured on the same records."""
        return perplexity(model, self.tokenizer, self.match, self.max_length, self.batch_size)


@dataclass
class Sweep:
    """What every run of a fine-tuning sweep shares (stage 03): the base model, the corpus, the one
    evaluation protocol, the specs, and each base model's evaluation before fine-tuning (measured once)."""

    base: Any
    tokenizer: Any
    corpus: Corpus                       # a replicate trains on its own canaries (Corpus.for_replicate)
    evaluator: Evaluator
    lora: LoRASpec                       # the DP runs'
    privacy: dict[float, PrivacySpec]
    train: TrainSpec                     # the DP runs'
    nonprivate: TrainSpec                # the non-private runs' (finetune.nonprivate)
    nonprivate_lora: LoRASpec            # the non-private runs' adapter (finetune.nonprivate)
    runs_dir: Path
    pruned_layers: list[int]
    choice_use: dict | None = None
    save_merged: bool = False
    before: dict[str, tuple[dict[str, float], pd.DataFrame]] = field(default_factory=dict)

    def untuned(self, model_name: str):
        """A fresh copy of the base of ``model_name`` (pruned by ``pruned_layers`` for the pruned model,
        with the data use that chose them recorded on it)."""
        model = copy.deepcopy(self.base)
        if base_model(model_name) == "pruned":
            remove_layers(model, self.pruned_layers)
            if self.choice_use is not None:
                record_use(model, DataUse(**self.choice_use))
        return model

    def tuned(self, run: FinetuneRun):
        """A finished run's model: its base with its adapter (in eval mode)."""
        return load_adapter(self.untuned(run.model), run.adapter_dir).eval()

    def run(self, model_name: str, eps: float, replicate: int, stop_rule: StopRule | None = None,
            matched: FinetuneRun | None = None) -> FinetuneRun:
        """Train (or reload) one run in its own folder with its own seed, evaluate it, save its record NLLs
        (``matched``: the DP run whose utility ``stop_rule`` matches)."""
        model = self.untuned(model_name)
        key = base_model(model_name)
        if key not in self.before:                       # the same untuned model for every ε
            self.before[key] = self.evaluator.measure(model)
        out = Path(self.runs_dir) / run_name(model_name, eps, replicate)
        private = self.privacy[eps].private
        settings, lora = (self.train, self.lora) if private else (self.nonprivate, self.nonprivate_lora)
        spec = replace(settings, seed=run_seed(self.train.seed, out.name))   # its own batches and noise
        texts = self.corpus.for_replicate(replicate).texts("train")
        result = finetune(model, self.tokenizer, texts, out, lora, self.privacy[eps], spec, progress=True,
                          stop_rule=stop_rule)
        tuned = result.model.eval()
        after = self.evaluator.measure(tuned)
        save_record_nll(out, self.before[key][1], after[1])
        if self.save_merged:
            merge_and_save(tuned, self.tokenizer, out / "merged")
        run = FinetuneRun.from_result(result, model=model_name, layers=len(decoder_layers(tuned.get_base_model())),
                                      target_epsilon=eps, before=self.before[key][0], after=after[0],
                                      run_dir=relative_to_cwd(out), seed=spec.seed, replicate=replicate,
                                      matched_epsilon=matched.target_epsilon if matched else math.nan,
                                      stop_perplexity=stop_rule.target if stop_rule else math.nan)
        run.eval_records = len(self.evaluator.private)
        run.lora_rank, run.lora_targets = lora.rank, "+".join(lora.target_modules)
        run.learning_rate, run.batch_size, run.epochs = spec.learning_rate, spec.batch_size, spec.epochs
        return run


def finetune_sweep(base, tokenizer, corpus, pruned_layers: list[int], profile, runs_dir,
                   choice_use: dict | None = None) -> pd.DataFrame:
    """Fine-tune every (model, ε) of the profile, ``finetune.replicates`` times each with its own seed,
    then the utility-matched runs (``finetune.utility_match``); one row per run (notebook 03).

    Each run starts from a fresh copy of ``base`` (pruned by ``pruned_layers``
    for the pruned model), trains on the training split (canaries included;
    replicate r > 0 on its own canaries, :meth:`~prunepriv.data.Corpus.for_replicate`),
    and is evaluated on held-out records and general English text. Runs that
    finished earlier with the same settings are reloaded, not retrained.
    ``choice_use`` (the data that chose ``pruned_layers``) is recorded on the
    pruned model, so that its runs' privacy records list it.
    """
    f = profile.finetune
    lora, privacy, train = finetune_specs(profile)
    sweep = Sweep(base, tokenizer, corpus, Evaluator(tokenizer, corpus, profile), lora, privacy, train,
                  nonprivate_train(profile, train), nonprivate_lora(profile, lora), Path(runs_dir), pruned_layers,
                  choice_use, f.save_merged)
    jobs = [(m, eps, r) for m in f.models for eps in f.epsilons if eps in f.epsilons_of(m)
            for r in range(f.replicates_of(m, eps))]
    runs = [sweep.run(m, eps, r) for m, eps, r in tqdm(jobs, desc="fine-tuning runs", leave=False)]
    if f.utility_match is not None:
        runs += matched_runs(sweep, runs, f.utility_match)
    return pd.DataFrame([run.to_row() for run in runs])


def matched_runs(sweep: Sweep, runs: list[FinetuneRun], epsilon: float) -> list[FinetuneRun]:
    """The utility-matched non-private baseline: for each DP run at ``epsilon`` of a model that also runs without
    privacy, that model trained without privacy (own seed, the non-private recipe) and stopped after the first
    step at which its held-out
    perplexity, on the evaluation records of :class:`Evaluator`, is at or below the DP run's. Without it,
    "DP memorizes less" could just be "DP learned less". The rule is fixed here, before any attack runs
    (stage 05). The step that reaches the target is taken only in part, as far as the target needs
    (:mod:`prunepriv.privacy.stopping`), so the run lands at its target, not a whole step below it."""
    out = []
    evaluator = sweep.evaluator
    nonprivate = {r.model for r in runs if math.isinf(r.target_epsilon)}   # a twin only where the model runs without DP
    for dp in tqdm([r for r in runs if r.target_epsilon == epsilon and r.model in nonprivate],
                   desc="utility-matched runs", leave=False):
        if len(evaluator.match) == len(evaluator.private):
            target = float(dp.perplexity_private)
            rule = StopRule(f"perplexity_private<={target!r}", evaluator.private_ppl, target)
        else:                                            # the DP run measured on the records the rule checks
            target = evaluator.match_ppl(sweep.tuned(dp))
            rule = StopRule(f"perplexity_match{len(evaluator.match)}<={target!r}", evaluator.match_ppl, target)
        out.append(sweep.run(matched_name(dp.model), math.inf, dp.replicate, rule, dp))
    return out


def save_record_nll(run_dir: Path, before: pd.DataFrame, after: pd.DataFrame) -> Path:
    """Write ``eval_nll.csv`` into a run's folder: every evaluation record's summed NLL before and after
    fine-tuning (with its cluster and token count), so that any interval can be computed afterwards."""
    table = before.rename(columns={"nll": "nll_before"}).assign(nll_after=after["nll"].to_numpy())
    path = Path(run_dir) / "eval_nll.csv"
    atomic_write_text(path, table.to_csv(index=False))
    return path


def training_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Loss and ε per step of every run, from their ``run.json`` logs."""
    frames = []
    for run in runs_of(runs):
        log = json.loads((Path(run.run_dir) / "run.json").read_text())["log"]
        frame = pd.DataFrame(log)
        label = epsilon_label(run.target_epsilon) + (" (utility-matched)" if is_matched(run.model) else "")
        frame["model"], frame["target_epsilon"] = base_model(run.model), label
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
