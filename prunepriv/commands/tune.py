"""``prunepriv tune``: choose the DP-SGD hyper-parameters on a public proxy corpus, never the private one.

Tuning on the private data would be a use of it that no ε covers (every
candidate tried leaks through the choice). The proxy is the synthetic corpus
drawn with another seed (:func:`proxy_corpus`): notes of the same kind, none
of them the experiment's records. Each candidate (a Cartesian grid over
``finetune`` settings: learning rate, logical batch, epochs, LoRA rank and
targets, clipping norm) trains the unpruned model twice on the proxy's
training split, under DP-SGD at the target ε and without privacy, and both
are evaluated on the proxy's held-out split. The measure of a candidate is
the share of the non-private run's held-out log-perplexity gain that the DP
run recovers (issue 14's aim: at least half at ε = 8); a candidate whose
curves spike (:func:`prunepriv.privacy.record.loss_spike` ≥ 1.5) is never
chosen. Runs are saved in the output folder and reloaded, so an interrupted
search resumes.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from prunepriv.config import FinetuneConfig, Profile
from prunepriv.data import Corpus, synthetic_corpus
from prunepriv.errors import ConfigError
from prunepriv.lm.models import load_model
from prunepriv.privacy.record import SPIKE, loss_spike
from prunepriv.privacy.specs import epsilon_label, finetune_specs, run_seed
from prunepriv.privacy.train import finetune
from prunepriv.progress import tqdm
from prunepriv.results import atomic_write_text, check_writable
from prunepriv.stages.experiments import Evaluator

PROXY_SEED_OFFSET = 1_000_003      # the proxy corpus's seed: the profile's plus this (never the profile's own)
TUNABLE = ("learning_rate", "batch_size", "epochs", "lora_rank", "lora_alpha", "target_modules", "max_grad_norm")


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


def with_candidate(profile: Profile, candidate: dict[str, Any], epsilon: float) -> Profile:
    """The profile with the candidate's ``finetune`` settings, training at ``epsilon`` and without privacy
    (validated, so a bad value is a one-line ConfigError)."""
    f: FinetuneConfig = replace(profile.finetune, **candidate, epsilons=[math.inf, epsilon], utility_match=None,
                                replicates=1)
    f.validate()
    return replace(profile, finetune=f)


def label(candidate: dict[str, Any]) -> str:
    """A candidate's folder name, e.g. ``learning_rate=0.005,batch_size=64``."""
    parts = [f"{k}={'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in candidate.items()]
    return ",".join(parts) or "profile"


def tune(profile: Profile, grid: dict[str, list[Any]], epsilon: float, output: str | Path) -> pd.DataFrame:
    """Train and evaluate every candidate on the proxy corpus (DP at ``epsilon`` and non-private); one row
    per candidate, the chosen one marked, written to ``OUTPUT/tuning.csv``."""
    if not 0 < epsilon < math.inf:
        raise ConfigError(f"tune needs a finite target ε > 0, got {epsilon}")
    options = candidates(grid)
    for candidate in options:
        with_candidate(profile, candidate, epsilon)             # every value checked before any model loads
    output = Path(output)
    check_writable(output)
    corpus = proxy_corpus(profile)
    base, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    evaluator = Evaluator(tokenizer, corpus, profile)
    before = evaluator.private_ppl(base)
    rows = [_candidate_row(base, tokenizer, corpus, evaluator, with_candidate(profile, c, epsilon), c, epsilon,
                           before, output) for c in tqdm(options, desc="tuning candidates", leave=False)]
    table = choose(pd.DataFrame(rows))
    atomic_write_text(output / "tuning.csv", table.to_csv(index=False))
    return table


def _candidate_row(base, tokenizer, corpus: Corpus, evaluator: Evaluator, profile: Profile,
                   candidate: dict[str, Any], epsilon: float, before: float, output: Path) -> dict[str, Any]:
    """One candidate's DP and non-private runs on the proxy, and the share of the gain DP recovers."""
    lora, privacy, train = finetune_specs(profile)
    row: dict[str, Any] = {"candidate": label(candidate), **{k: str(v) for k, v in candidate.items()},
                           "epsilon": epsilon, "perplexity_before": before}
    for eps, tag in ((epsilon, "dp"), (math.inf, "nonprivate")):
        out = output / label(candidate) / f"eps-{epsilon_label(eps)}"
        spec = replace(train, seed=run_seed(train.seed, f"tune/{label(candidate)}/{out.name}"))
        result = finetune(copy.deepcopy(base), tokenizer, corpus.texts("train"), out, lora, privacy[eps], spec,
                          progress=True)
        row[f"perplexity_{tag}"] = evaluator.private_ppl(result.model.eval())
        row[f"loss_spike_{tag}"] = loss_spike([entry["loss"] for entry in result.log])
        row[f"steps_{tag}"] = result.privacy.steps
        if tag == "dp":
            row["noise_multiplier"], row["epsilon_rdp"] = result.privacy.noise_multiplier, result.privacy.epsilon_rdp
    row["recovered"] = recovered_gain(before, row["perplexity_dp"], row["perplexity_nonprivate"])
    return row


def recovered_gain(before: float, private: float, nonprivate: float) -> float:
    """The share of the non-private run's held-out log-perplexity gain that the DP run recovers:
    (log before − log DP) / (log before − log non-private); NaN when the non-private run gained nothing."""
    gain = math.log(before) - math.log(nonprivate)
    return (math.log(before) - math.log(private)) / gain if gain > 0 else math.nan


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """Mark (``chosen``) the candidate whose DP run recovers the largest share, among those whose curves
    do not spike; no candidate is chosen when every one spikes."""
    stable = (table["loss_spike_dp"].fillna(0) < SPIKE) & (table["loss_spike_nonprivate"].fillna(0) < SPIKE)
    table = table.assign(stable=stable, chosen=False)
    if stable.any() and table.loc[stable, "recovered"].notna().any():
        table.loc[table.loc[stable, "recovered"].idxmax(), "chosen"] = True
    return table
