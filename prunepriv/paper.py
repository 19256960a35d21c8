"""The paper's generated parts: ``numbers.tex`` (one macro per number) and ``tables/*.tex``.

Written by notebook ``07_paper`` from the profile's own result tables; the
paper (``paper/main.tex``) types no number by hand. Every claim of
:mod:`prunepriv.claims` becomes a macro, so the paper and ``prunepriv verify``
quote the same values.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .claims import Claim, claims_from, load_tables, top_repetitions
from .latex import escape, macros, number, problems, tabular


def output_dir(profile_name: str) -> str:
    """``paper/generated`` for the paper profile; other profiles keep theirs under their results."""
    return "paper/generated" if profile_name == "paper" else f"results/{profile_name}/paper"


def _digits(claim_id: str) -> int:
    if claim_id.startswith(("pruning.perplexity", "finetune.perplexity")):
        return 1
    if claim_id.startswith(("memorization.mia", "latency", "pruning.parameters")):
        return 3 if claim_id.startswith("pruning.parameters") else 2
    return 2


def _claim_value(claim: Claim) -> str:
    if isinstance(claim.value, str):
        return escape(", ".join(claim.value.split()))
    return number(float(claim.value), _digits(claim.id))


def _sci(value: float, digits: int = 1) -> str:
    """Perplexities span 30 to 1e9: fixed below 10^4, else mantissa × 10^k."""
    if math.isinf(value):
        return r"$\infty$"
    if abs(value) < 1e4:
        return f"{value:.{digits}f}"
    exponent = int(math.floor(math.log10(abs(value))))
    return f"${value / 10 ** exponent:.1f}\\times10^{{{exponent}}}$"


def _power(value: float) -> str:
    """``2.9e-04`` as ``\\ensuremath{2.9\\times10^{-4}}`` (``10^{-6}`` when the mantissa is 1)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    power = f"10^{{{int(exponent)}}}"
    body = power if mantissa == "1.0" else mantissa + r"\times" + power
    return f"\\ensuremath{{{body}}}"


def _eps(value: float) -> str:
    return r"$\infty$" if math.isinf(value) else f"{value:g}"


def numbers(results_dir: str | Path) -> dict[str, str]:
    """Every number the paper quotes, keyed by a dotted name (the macro name is derived from it)."""
    t = load_tables(results_dir)
    values = {f"claim.{c.id}": _claim_value(c) for c in claims_from(results_dir)}
    chosen, runs, pruning = t["pruned_layers.json"], t["finetune.csv"], t["pruning.csv"]
    full = pruning[pruning["removed"] == 0].iloc[0]
    first = runs.iloc[0]
    audit, synthetic = t["audit.csv"], t["synthetic.csv"]
    memo = t["memorization.csv"]
    top = top_repetitions(memo)
    values.update({
        "setup.layers": str(chosen["num_layers"]),
        "setup.removed": str(chosen["removed"]),
        "setup.strategy": escape(chosen["strategy"]),
        "setup.parameters": f"{full['parameters'] / 1e6:.1f}M",
        "setup.train.records": str(int(first["n_train"])),
        "setup.steps": str(int(first["steps"])),
        "setup.sample.rate": f"{first['sample_rate']:.3f}",
        "setup.delta": _power(float(first["delta"])),
        "setup.epsilons": ", ".join(_eps(e) for e in sorted({e for e in runs["target_epsilon"]}, key=lambda e: -e)
                                    if not math.isinf(e)),
        "setup.strategies": str(pruning["strategy"].nunique()),
        "setup.synthetic.samples": str(int(synthetic["samples"].iloc[0])),
        "setup.audit.canaries": str(int(audit["audit_canaries"].iloc[0])),
        "setup.audit.delta": _power(float(audit["audit_delta"].iloc[0])),
        "setup.canary.top": str(top),
        "memorization.chance": number(float(memo["exposure_chance"].iloc[0]), 2),
        "memorization.dp.excess.max": number(float((memo[f"exposure_r{top}"] - memo["exposure_heldout"])[
            ~memo["target_epsilon"].map(math.isinf)].max()), 2),
        "memorization.extraction.max": number(float(memo["extraction_excess"].max()), 2),
        "memorization.pii.max": number(float(memo[["pii_leaked_train", "pii_leaked_heldout"]].max().max()), 2),
    })
    return values


def tables(results_dir: str | Path) -> dict[str, str]:
    """``{file stem: LaTeX table}`` for the paper's tables."""
    t = load_tables(results_dir)
    return {"pruning": _pruning_table(t["pruning.csv"], t["pruned_layers.json"]),
            "latency": _latency_table(t["latency.csv"]),
            "finetune": _finetune_table(t["finetune.csv"]),
            "memorization": _memorization_table(t["memorization.csv"]),
            "audit": _audit_table(t["audit.csv"])}


def _pruning_table(frame: pd.DataFrame, chosen: dict) -> str:
    wide = frame.pivot(index="removed", columns="strategy", values="perplexity_private")
    strategies = [s for s in frame["strategy"].drop_duplicates()]
    rows = [[str(k)] + [_sci(float(wide.loc[k, s])) for s in strategies] for k in wide.index]
    return tabular(["removed"] + [escape(s) for s in strategies], rows, "r" + "r" * len(strategies),
                   f"Held-out perplexity after removing $k$ of {chosen['num_layers']} layers, before healing, "
                   "by layer-selection strategy.", "tab:gen-pruning")


def _latency_table(frame: pd.DataFrame) -> str:
    rows = [[str(r.removed), str(r.layers_left), f"{r.prefill_ratio:.2f}", f"{r.decode_ratio:.2f}",
             f"{r.ideal_ratio:.2f}"] for r in frame.itertuples()]
    return tabular(["removed", "layers", "prefill", "decode", "layers ratio"], rows, "rrrrr",
                   "Prefill and decode time relative to the unpruned model (ratios measured in one run).",
                   "tab:gen-latency")


def _finetune_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.model), _eps(r.target_epsilon), _eps(r.epsilon_rdp) if math.isinf(r.epsilon_rdp)
             else f"{r.epsilon_rdp:.2f}", _eps(r.epsilon_prv) if math.isinf(r.epsilon_prv) else f"{r.epsilon_prv:.2f}",
             f"{r.noise_multiplier:.2f}", _sci(r.perplexity_private_before), _sci(r.perplexity_private),
             _sci(r.perplexity_general)] for r in frame.itertuples()]
    return tabular(["model", r"target $\varepsilon$", r"$\varepsilon$ RDP", r"$\varepsilon$ PRV", r"$\sigma$",
                    "ppl before", "ppl after", "general ppl"], rows, "lrrrrrrr",
                   "LoRA fine-tuning under DP-SGD: the accountant's $\\varepsilon$ of each run and held-out "
                   "perplexity before and after.", "tab:gen-finetune")


def _memorization_table(frame: pd.DataFrame) -> str:
    top = top_repetitions(frame)
    rows = [[escape(r.model), _eps(r.target_epsilon), f"{getattr(r, f'exposure_r{top}'):.2f}",
             f"{r.exposure_heldout:.2f}", f"{r.mia_auc_reference:.2f}", f"{r.mia_auc_loss:.2f}",
             f"{r.extraction_excess:.2f}"] for r in frame.itertuples()]
    return tabular(["model", r"$\varepsilon$", f"exposure {top}$\\times$", "control", "MIA ref.", "MIA loss",
                    "extraction"], rows, "lrrrrrr",
                   f"Memorization: exposure (bits) of canaries repeated {top} times vs never-trained canaries "
                   "(control), membership AUC (reference-calibrated and loss), extraction excess of synthetic "
                   "text over the held-out control.", "tab:gen-memorization")


def _audit_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.model), _eps(r.target_epsilon), _eps(r.epsilon_rdp_at_audit_delta)
             if math.isinf(r.epsilon_rdp_at_audit_delta) else f"{r.epsilon_rdp_at_audit_delta:.2f}",
             f"{r.epsilon_lower_bound:.2f}", f"{int(r.correct)}/{int(r.guesses)}"] for r in frame.itertuples()]
    return tabular(["model", r"target $\varepsilon$", r"accountant $\varepsilon$", "audit bound", "correct"],
                   rows, "lrrrr", "One-run privacy audit: the 95\\% lower bound on $\\varepsilon$ next to the "
                   "accountant's $\\varepsilon$ at the audit's $\\delta$.", "tab:gen-audit")


def write(run, results_dir: str | Path) -> list[Path]:
    """Write ``numbers.tex`` and ``tables/*.tex`` through ``run`` (staged, in the manifest).

    Every file passes :func:`prunepriv.latex.problems` first; LaTeX that would not compile is not written.
    """
    target = output_dir(run.profile.name)
    files = {f"{target}/numbers.tex": ("tex:numbers", macros(numbers(results_dir),
                                                               f"numbers of profile {run.profile.name}"))}
    files.update({f"{target}/tables/{stem}.tex": (f"tex:table-{stem}", text)
                  for stem, text in tables(results_dir).items()})
    for path, (_, text) in files.items():
        if found := problems(text):
            raise ValueError(f"generated {path} would not compile: {'; '.join(found)}")
    return [run.save_text(artifact_id, text, path) for path, (artifact_id, text) in files.items()]
