"""Notebook 06, section 4: every layer-removal strategy at the paper's depth, before and after DP healing.

Notebook 02 compares the strategies before any fine-tuning; a reader also
asks whether the ranking survives healing. Each strategy's choice of
``pruning.paper_remove`` layers (``tab:pruning``) is fine-tuned with the same
DP-LoRA at ``baselines.epsilon`` and evaluated with one protocol
(:class:`prunepriv.stages.experiments.Evaluator`): *cosine* is ShortGPT's
Block Influence ranking exactly (Men et al. 2024; BI = 1 − cosine), *block*
is Gromov et al.'s (2024) block of consecutive layers by angular distance,
*greedy-loss* is SLEB's greedy search (Song et al. 2024), *last* and *random*
read no data. The paper's own strategy is stage 03's run at that ε when its
grid holds it (``source``: ``stage 03``); every other run is this stage's,
with its own seed.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from prunepriv.compress.pruning import remove_layers
from prunepriv.errors import PrunePrivError
from prunepriv.lm.evaluation import paired_ratio_interval
from prunepriv.privacy.record import run_name
from prunepriv.privacy.uses import record_use
from prunepriv.progress import tqdm
from prunepriv.stages.baselines import dp_finetune, stage03_run
from prunepriv.stages.experiments import Evaluator, calibration_texts, layer_choice_use

# the run's columns in tab:pruning-healed
RUN_COLUMNS = ("seed", "epsilon_rdp", "delta", "noise_multiplier", "steps", "perplexity_private_before",
               "perplexity_private", "perplexity_private_low", "perplexity_private_high", "perplexity_general",
               "loss_spike", "train_seconds", "run_dir", "uncovered_uses")


def strategy_layers(pruning: pd.DataFrame, strategy: str, k: int) -> list[int]:
    """The ``k`` layers ``strategy`` removed in notebook 02's sweep (``tab:pruning``)."""
    row = pruning[(pruning["strategy"] == strategy) & (pruning["removed"] == k)]
    if not len(row):
        raise PrunePrivError(f"tab:pruning has no row for strategy {strategy!r} at {k} layers removed: "
                             "pruning.remove must list pruning.paper_remove")
    return [int(x) for x in str(row.iloc[0]["removed_layers"]).split()]


def choice_records(profile, corpus, strategy: str, similarity_records: int) -> int:
    """How many calibration records chose the layers of ``strategy`` (SLEB's search reads its own sample)."""
    if strategy == "greedy-loss":
        return len(calibration_texts(profile, corpus, profile.pruning.greedy_samples))
    return similarity_records


def healed_strategies(model, tokenizer, corpus, profile, pruning: pd.DataFrame, runs: pd.DataFrame | None,
                      runs_dir: Path, similarity_records: int) -> pd.DataFrame:
    """``tab:pruning-healed``: one row per strategy of ``baselines.heal_strategies`` at ``pruning.paper_remove``,
    each fine-tuned with notebook 06's DP-LoRA at ``baselines.epsilon`` (:func:`prunepriv.stages.baselines.dp_finetune`).

    ``runs``: stage 03's ``tab:finetuning`` (its pruned run at that ε is reused).
    ``perplexity_private_before`` comes from the same evaluation as the
    run's ``perplexity_private`` (not notebook 02's, which scores other
    records), so ``healing`` = before / after compares like with like.
    """
    b, k = profile.baselines, profile.pruning.paper_remove
    reused = stage03_run(runs, "pruned", b.epsilon)
    evaluator = Evaluator(tokenizer, corpus, profile)
    rows = []
    for strategy in tqdm(b.heal_strategies, desc="DP healing per strategy", leave=False):
        layers = strategy_layers(pruning, strategy, k)
        if strategy == profile.pruning.paper_strategy and reused is not None:
            run, source = reused, "stage 03"
        else:
            pruned = remove_layers(copy.deepcopy(model), layers)
            use = layer_choice_use(profile, strategy, choice_records(profile, corpus, strategy, similarity_records))
            if use is not None:
                record_use(pruned, use)
            run, tuned = dp_finetune(pruned, tokenizer, corpus, profile,
                                     Path(runs_dir) / run_name(f"heal-{strategy}", b.epsilon), evaluator, strategy)
            source = "stage 06"
            del tuned, pruned
        rows.append({"strategy": strategy, "removed": k, "removed_layers": " ".join(map(str, layers)),
                     "target_epsilon": b.epsilon, "source": source,
                     "healing": run.perplexity_private_before / run.perplexity_private, **run.to_row(RUN_COLUMNS)})
    return paired_to_paper(pd.DataFrame(rows), profile.pruning.paper_strategy)


def paired_to_paper(table: pd.DataFrame, paper_strategy: str) -> pd.DataFrame:
    """Each strategy's healed perplexity over the paper strategy's, on the same evaluation records, with a
    paired patient-bootstrap interval (``ratio_to_paper``, ``_low``, ``_high``; NaN where a run left no
    per-record NLLs): two strategies differ only where that interval excludes 1."""
    table = table.assign(ratio_to_paper=float("nan"), ratio_to_paper_low=float("nan"),
                         ratio_to_paper_high=float("nan"))
    paper = table[table["strategy"] == paper_strategy]
    reference = _record_nll(paper["run_dir"].iloc[0]) if len(paper) else None
    if reference is None:
        return table
    for index, row in table.iterrows():
        mine = _record_nll(row["run_dir"])
        if mine is None or len(mine) != len(reference):
            continue
        private = (mine["split"] == "private").to_numpy()
        table.loc[index, ["ratio_to_paper", "ratio_to_paper_low", "ratio_to_paper_high"]] = paired_ratio_interval(
            mine["nll_after"][private], reference["nll_after"][private], mine["tokens"][private],
            list(mine["cluster"][private]))
    return table


def _record_nll(run_dir) -> pd.DataFrame | None:
    path = Path(run_dir) / "eval_nll.csv"
    return pd.read_csv(path) if path.is_file() else None

