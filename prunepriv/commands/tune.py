"""``prunepriv tune``: choose the DP-SGD hyper-parameters on a public proxy corpus, never the private one.

Tuning on the private data would be a use of it that no ε covers (every
candidate tried leaks through the choice). The proxy is the synthetic corpus
drawn with another seed (:func:`proxy_corpus`): notes of the same kind and
sizes, none of them the experiment's records. The model tuned is the one the
paper's claims are about: by default the profile's pruned model, its layers
chosen by the profile's rule on the *proxy's* calibration text (:func:`proxy_base`).

Two grids are searched, each candidate trained ``seeds`` times with seeds of
its own (its own Poisson batches and noise) and evaluated on the proxy's
held-out split:

* the **non-private** grid (``nonprivate``: learning rate, batch, epochs, …);
  the best of its candidates (lowest mean held-out log-perplexity) is the
  reference gain;
* the **DP** grid at the target ε (learning rate, logical batch, epochs,
  warm-up, LoRA rank and targets, clipping norm: what sets the noise norm
  σ·C·√d / B and how far each step moves).

A DP candidate scores the share of the *best* non-private run's held-out
log-perplexity gain that it recovers, per seed (mean, and the range over the
seeds) — never the gain of its own twin, which would reward a candidate whose
twin learned little. A candidate whose smoothed training loss spikes
(:func:`prunepriv.privacy.record.loss_spike`) is never chosen. Runs are saved
under the output folder and reloaded, so an interrupted search resumes.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunepriv.compress.pruning import choose_layers, remove_layers
from prunepriv.config import TUNABLE, FinetuneConfig, Profile
from prunepriv.data import Corpus, synthetic_corpus
from prunepriv.errors import ConfigError
from prunepriv.lm.models import decoder_layers, load_model
from prunepriv.privacy.record import SPIKE, loss_spike
from prunepriv.privacy.specs import finetune_specs, nonprivate_lora, nonprivate_train, run_seed
from prunepriv.privacy.train import finetune
from prunepriv.progress import tqdm
from prunepriv.results import atomic_write_json, atomic_write_text, check_writable
from prunepriv.stages.experiments import (
    Evaluator,
    calibration_texts,
    decision_model,
    greedy_order_for,
    measure_similarity,
)

PROXY_SEED_OFFSET = 1_000_003      # the proxy corpus's seed: the profile's plus this (never the profile's own)
NONPRIVATE = ("learning_rate", "batch_size", "epochs", "lora_rank", "lora_alpha", "target_modules")   # finetune.nonprivate
BASES = ("pruned", "unpruned")


def proxy_corpus(profile: Profile) -> Corpus:
    """The public stand-in for the private corpus: the synthetic corpus of the same sizes drawn with the
    profile's seed plus :data:`PROXY_SEED_OFFSET`. A user's own file has no such twin: refused."""
    if profile.data.source != "synthetic":
        raise ConfigError("tune needs a public proxy corpus and only the synthetic corpus has one; tune with "
                          "--set data.source=synthetic (or on public text of your own given as the profile's data)")
    return synthetic_corpus(profile.seed + PROXY_SEED_OFFSET, profile.data)


def candidates(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (``{"learning_rate": [0.002, 0.005]}`` → two candidates);
    an unknown setting is a ConfigError."""
    unknown = sorted(set(grid) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"cannot tune {', '.join(unknown)}; tunable: {', '.join(TUNABLE)}")
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def with_candidate(profile: Profile, candidate: dict[str, Any], epsilon: float, private: bool = True) -> Profile:
    """The profile with the candidate's ``finetune`` settings (a non-private candidate's learning rate,
    batch and epochs go to ``finetune.nonprivate``), validated, so a bad value is a one-line ConfigError."""
    own = {k: v for k, v in candidate.items() if private or k not in NONPRIVATE}
    nonprivate = profile.finetune.nonprivate if private else replace(
        profile.finetune.nonprivate, **{k: v for k, v in candidate.items() if k in NONPRIVATE})
    f: FinetuneConfig = replace(profile.finetune, **own, nonprivate=nonprivate, epsilons=[math.inf, epsilon],
                                model_epsilons=None, utility_match=None, replicates=1, replicate_models=None, replicate_epsilons=None)
    f.validate()
    return replace(profile, finetune=f)


def label(candidate: dict[str, Any]) -> str:
    """A candidate's folder name, e.g. ``learning_rate=0.005,batch_size=64``."""
    parts = [f"{k}={'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in candidate.items()]
    return ",".join(parts) or "profile"


def proxy_base(profile: Profile, corpus: Corpus, model, tokenizer, base: str = "pruned"):
    """The model tuned: ``unpruned``, or the profile's pruned model with its layers chosen by the profile's
    rule (``pruning.paper_strategy``, ``paper_remove``) on the proxy's calibration text, so that no private
    record enters the choice either. Returns the model and the layers removed."""
    if base not in BASES:
        raise ConfigError(f"tune --base must be one of {', '.join(BASES)}, got {base!r}")
    if base == "unpruned":
        return model, []
    p = profile.pruning
    texts = calibration_texts(profile, corpus, profile.similarity.n_samples)
    sim = measure_similarity(decision_model(profile, model), tokenizer, texts, profile.similarity.max_length, profile.similarity.batch_size)
    greedy = None
    if p.paper_strategy == "greedy-loss":
        greedy, _ = greedy_order_for(model, tokenizer, texts[: p.greedy_samples], p.paper_remove,
                                     p.eval_max_length, p.batch_size)
    layers = choose_layers(p.paper_strategy, p.paper_remove, len(decoder_layers(model)), sim, profile.seed, greedy)
    return remove_layers(copy.deepcopy(model), layers), layers


def tune(profile: Profile, grid: dict[str, list[Any]], epsilon: float, output: str | Path,
         nonprivate_grid: dict[str, list[Any]] | None = None, seeds: int = 2, base: str = "pruned",
         extra: list[dict[str, Any]] | None = None,
         nonprivate_extra: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Train and evaluate every candidate of both grids (and the candidates given whole, ``extra`` and
    ``nonprivate_extra``) on the proxy corpus, ``seeds`` times each; one row per candidate (``kind``:
    ``nonprivate`` or ``dp``), the best non-private one and the chosen DP one marked, written to
    ``OUTPUT/tuning.csv``."""
    if not 0 < epsilon < math.inf:
        raise ConfigError(f"tune needs a finite target ε > 0, got {epsilon}")
    if seeds < 1:
        raise ConfigError(f"tune --seeds must be >= 1, got {seeds}")
    if base not in BASES:
        raise ConfigError(f"tune --base must be one of {', '.join(BASES)}, got {base!r}")
    for candidate in (extra or []) + (nonprivate_extra or []):
        candidates({k: [v] for k, v in candidate.items()})      # unknown settings refused as in a grid
    nonprivate = (candidates(nonprivate_grid or {}) if nonprivate_grid or not nonprivate_extra else []) \
        + list(nonprivate_extra or [])
    dp = (candidates(grid) if grid or not extra else []) + list(extra or [])
    jobs = [("nonprivate", c) for c in nonprivate] + [("dp", c) for c in dp]
    for kind, candidate in jobs:
        with_candidate(profile, candidate, epsilon, kind == "dp")   # every value checked before any model loads
    output = Path(output)
    check_writable(output)
    corpus = proxy_corpus(profile)
    model, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    model, layers = proxy_base(profile, corpus, model, tokenizer, base)
    evaluator = Evaluator(tokenizer, corpus, profile)
    before = evaluator.private_ppl(model)
    rows = [_candidate_row(model, tokenizer, corpus, evaluator, profile, kind, c, epsilon, seeds, output)
            for kind, c in tqdm(jobs, desc="tuning candidates", leave=False)]
    table = choose(pd.DataFrame(rows).assign(base=base, removed_layers=" ".join(map(str, layers)),
                                             perplexity_before=before))
    atomic_write_text(output / "tuning.csv", table.to_csv(index=False))
    return table


def _candidate_row(model, tokenizer, corpus: Corpus, evaluator: Evaluator, profile: Profile, kind: str,
                   candidate: dict[str, Any], epsilon: float, seeds: int, output: Path) -> dict[str, Any]:
    """One candidate's runs on the proxy (``seeds`` of them), their held-out perplexities and spikes."""
    private = kind == "dp"
    setting = with_candidate(profile, candidate, epsilon, private)
    lora, privacy, train = finetune_specs(setting)
    spec = train if private else nonprivate_train(setting, train)
    lora = lora if private else nonprivate_lora(setting, lora)
    eps = epsilon if private else math.inf
    row: dict[str, Any] = {"kind": kind, "candidate": label(candidate), **{k: str(v) for k, v in candidate.items()},
                           "epsilon": eps, "seeds": seeds, "learning_rate_used": spec.learning_rate,
                           "batch_size_used": spec.batch_size, "epochs_used": spec.epochs,
                           "lora_rank_used": lora.rank, "target_modules_used": "+".join(lora.target_modules)}
    spikes = []
    for seed in range(seeds):
        out = output / kind / label(candidate) / f"seed{seed}"
        run = replace(spec, seed=run_seed(train.seed, f"tune/{kind}/{label(candidate)}/seed{seed}"))
        result = finetune(copy.deepcopy(model), tokenizer, corpus.texts("train"), out, lora, privacy[eps], run,
                          progress=True)
        row[f"perplexity_seed{seed}"] = _evaluated(out, result, evaluator)
        spikes.append(loss_spike([entry["loss"] for entry in result.log]))
        row["steps"] = result.privacy.steps
        row["noise_multiplier"], row["epsilon_rdp"] = result.privacy.noise_multiplier, result.privacy.epsilon_rdp
    row["loss_spike"] = max(spikes)
    row["perplexity"] = math.exp(np.mean([math.log(row[f"perplexity_seed{s}"]) for s in range(seeds)]))
    return row


def _evaluated(out: Path, result, evaluator: Evaluator) -> float:
    """The run's held-out perplexity on the proxy, saved beside it (``proxy_eval.json``, keyed by the run's
    digest and the evaluation records) and reloaded when a search is run again with more candidates."""
    run = json.loads((out / "run.json").read_text())["digest"] if (out / "run.json").is_file() else None
    key = hashlib.sha256(json.dumps([run, evaluator.private, evaluator.max_length]).encode()).hexdigest()
    path = out / "proxy_eval.json"
    if path.is_file() and (saved := json.loads(path.read_text())).get("key") == key:
        return float(saved["perplexity"])
    value = evaluator.private_ppl(result.model.eval())
    atomic_write_json(path, {"key": key, "perplexity": value})
    return value


def recovered_gain(before: float, private: float, nonprivate: float) -> float:
    """The share of the non-private run's held-out log-perplexity gain that the DP run recovers:
    (log before − log DP) / (log before − log non-private); NaN when the non-private run gained nothing."""
    gain = math.log(before) - math.log(nonprivate)
    return (math.log(before) - math.log(private)) / gain if gain > 0 else math.nan


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """Mark the best non-private candidate (``best_nonprivate``: lowest held-out perplexity, geometric mean
    over seeds, among those that do not spike) and score every DP candidate against it: ``recovered`` (the
    mean over seeds of each seed's recovered share), ``recovered_min`` / ``recovered_max``; ``chosen`` is the
    stable DP candidate with the largest mean share. Without a stable non-private candidate nothing is
    chosen."""
    stable = table["loss_spike"] < SPIKE                 # NaN (a run whose every loss diverged) is not stable
    stable &= table["perplexity"].map(lambda p: math.isfinite(float(p)))
    table = table.assign(stable=stable, best_nonprivate=False, chosen=False, recovered=math.nan,
                         recovered_min=math.nan, recovered_max=math.nan)
    nonprivate = table[(table["kind"] == "nonprivate") & stable]
    if not len(nonprivate):
        return table
    best = nonprivate["perplexity"].idxmin()
    table.loc[best, "best_nonprivate"] = True
    reference = float(table.loc[best, "perplexity"])
    seed_columns = sorted(c for c in table.columns if c.startswith("perplexity_seed"))
    for index in table.index[table["kind"] == "dp"]:
        shares = [recovered_gain(float(table.loc[index, "perplexity_before"]), float(table.loc[index, c]), reference)
                  for c in seed_columns if math.isfinite(table.loc[index, c])]
        if shares:
            table.loc[index, ["recovered", "recovered_min", "recovered_max"]] = [
                float(np.mean(shares)), min(shares), max(shares)]
    dp = table[(table["kind"] == "dp") & table["stable"] & table["recovered"].notna()]
    if len(dp):
        table.loc[dp["recovered"].idxmax(), "chosen"] = True
    return table
