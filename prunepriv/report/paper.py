"""The paper's generated parts: ``numbers.tex`` (one macro per number) and ``tables/*.tex``.

Written by notebook ``07_paper`` from the profile's own result tables; the
paper (``paper/main.tex``) types no number by hand. Every claim of
:mod:`prunepriv.report.claims` becomes a macro, so the paper and ``prunepriv verify``
quote the same values.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from prunepriv.report.claims import Claim, claims, top_repetitions
from prunepriv.report.latex import epsilon, escape, macros, number, problems, tabular
from prunepriv.report.seeds import collapse_replicates, row_interval


def output_dir(profile_name: str) -> str:
    """``paper/generated`` for the paper profile; other profiles keep theirs under their results."""
    return "paper/generated" if profile_name == "paper" else f"results/{profile_name}/paper"


def _digits(claim_id: str) -> int:
    if claim_id.startswith(("pruning.perplexity", "finetune.perplexity", "federated.wanda.perplexity",
                            "selection.perplexity", "compression.perplexity")):
        return 1
    if claim_id == "federated.similarity.difference":
        return 1
    if claim_id.startswith(("memorization.mia", "latency", "pruning.parameters")):
        return 3 if claim_id.startswith("pruning.parameters") else 2
    return 2


def _claim_value(claim: Claim) -> str:
    if isinstance(claim.value, str):
        return escape(", ".join(claim.value.split()))
    if claim.id == "federated.similarity.difference":          # float rounding, ~1e-6
        return "0" if float(claim.value) == 0 else _power(float(claim.value))
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


def numbers(t: dict[str, object]) -> dict[str, str]:
    """Every number the paper quotes, keyed by a dotted name (the macro name is derived from it)."""
    values = {f"claim.{c.id}": _claim_value(c) for c in claims(t)}
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
        "setup.epsilons": ", ".join(epsilon(e) for e in sorted({e for e in runs["target_epsilon"]}, key=lambda e: -e)
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
    values.update(_baseline_numbers(t))
    return values


def _baseline_numbers(t) -> dict[str, str]:
    """Settings of notebook 06 that the paper's text names."""
    fed_info = t["federated.json"]
    info, draws, comp = t["private_selection.json"], t["private_selection_draws.csv"], t["compression_baselines.csv"]
    layer_rows = comp[comp["model"].str.startswith("layer removal")]
    matched = re.search(r"k=(\d+)", layer_rows["model"].iloc[0]) if len(layer_rows) else None
    finite = sorted(e for e in draws["selection_epsilon"].unique() if math.isfinite(e))
    sparsity = next((m for name in comp["model"] if (m := re.search(r"(\d+)%", name))), None)
    return {
        "setup.clients": str(int(fed_info["n_clients"])),
        "setup.client.records": str(int(fed_info["records_per_client"][0])),
        "setup.sparsity": sparsity.group(1) if sparsity else "--",
        "setup.selection.records": str(int(info["records"])),
        "setup.selection.clip": f"{float(info['clip']):g}",
        "setup.selection.clipped": f"{100 * float(info['fraction_clipped']):.0f}",
        "setup.selection.draws": str(int(draws["draw"].max()) + 1),
        "setup.selection.epsilons": ", ".join(f"{e:g}" for e in finite),
        "setup.public.passages": str(int(info["public_passages"])),
        "setup.baselines.epsilon": f"{float(comp['target_epsilon'].iloc[0]):g}",
        "setup.matched.layers": matched.group(1) if matched else "--",
        "compression.mia.min": number(float(comp["mia_auc_reference"].min()), 2),
        "compression.mia.max": number(float(comp["mia_auc_reference"].max()), 2),
        "compression.exposure.excess.max": number(float((comp["exposure_trained"] - comp["exposure_heldout"]).max()), 2),
    }


def tables(t: dict[str, object]) -> dict[str, str]:
    """``{file stem: LaTeX table}`` for the paper's tables."""
    return {"pruning": _pruning_table(t["pruning.csv"], t["pruned_layers.json"]),
            "latency": _latency_table(t["latency.csv"]),
            "finetune": _finetune_table(collapse_replicates(t["finetune.csv"], ["perplexity_private"])),
            "memorization": _memorization_table(collapse_replicates(t["memorization.csv"], [])),
            "audit": _audit_table(t["audit.csv"]),
            "federated": _federated_table(t["federated.csv"]),
            "selection": _selection_table(t["private_selection.csv"], t["private_selection_draws.csv"]),
            "compression": _compression_table(t["compression_baselines.csv"]),
            "healing": _healing_table(t.get("pruning_healed.csv"), t["pruned_layers.json"])}


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
    rows = [[escape(r.model), epsilon(r.target_epsilon), epsilon(r.epsilon_rdp) if math.isinf(r.epsilon_rdp)
             else f"{r.epsilon_rdp:.2f}", epsilon(r.epsilon_prv) if math.isinf(r.epsilon_prv) else f"{r.epsilon_prv:.2f}",
             f"{r.noise_multiplier:.2f}", _sci(r.perplexity_private_before), _sci(r.perplexity_private),
             _range(r, "perplexity_private"), _sci(r.perplexity_general)] for r in frame.itertuples()]
    return tabular(["model", r"target $\varepsilon$", r"$\varepsilon$ RDP", r"$\varepsilon$ PRV", r"$\sigma$",
                    "ppl before", "ppl after", "95\\% interval", "general ppl"], rows, "lrrrrrrrr",
                   "LoRA fine-tuning under DP-SGD: the accountant's $\\varepsilon$ of each run and held-out "
                   "perplexity before and after, with a 95\\% interval (across seeds where a setting ran more "
                   "than once, else a bootstrap over held-out patients).",
                   "tab:gen-finetune")


def _optional(row, column: str) -> str:
    """A column that tables written before it existed lack (``--`` there)."""
    value = getattr(row, column, math.nan)
    return "--" if not math.isfinite(value) else f"{value:.2f}"


def _range(row, column: str) -> str:
    """``[low, high]`` of ``column`` from the row's ``_low`` / ``_high`` columns (``--`` when not measured)."""
    span = row_interval(row, column)
    return "--" if span is None else f"[{_sci(span[0])}, {_sci(span[1])}]"


def _memorization_table(frame: pd.DataFrame) -> str:
    top = top_repetitions(frame)
    rows = [[escape(r.model), epsilon(r.target_epsilon), f"{getattr(r, f'exposure_r{top}'):.2f}",
             f"{r.exposure_heldout:.2f}", f"{r.mia_auc_reference:.2f}", f"{r.mia_auc_loss:.2f}",
             f"{r.extraction_excess:.2f}"] for r in frame.itertuples()]
    return tabular(["model", r"$\varepsilon$", f"exposure {top}$\\times$", "control", "MIA ref.", "MIA loss",
                    "extraction"], rows, "lrrrrrr",
                   f"Memorization: exposure (bits) of canaries repeated {top} times vs never-trained canaries "
                   "(control), membership AUC (reference-calibrated and loss), extraction excess of synthetic "
                   "text over the held-out control.", "tab:gen-memorization")


def _audit_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.model), epsilon(r.target_epsilon), epsilon(r.epsilon_rdp_at_audit_delta)
             if math.isinf(r.epsilon_rdp_at_audit_delta) else f"{r.epsilon_rdp_at_audit_delta:.2f}",
             f"{r.epsilon_lower_bound:.2f}", _optional(r, "epsilon_attainable"), f"{int(r.correct)}/{int(r.guesses)}"]
            for r in frame.itertuples()]
    return tabular(["model", r"target $\varepsilon$", r"accountant $\varepsilon$", "audit bound", "attainable",
                    "correct"],
                   rows, "lrrrrr", "One-run privacy audit: the 95\\% lower bound on $\\varepsilon$ next to the "
                   "accountant's $\\varepsilon$ at the audit's $\\delta$, and the largest bound its canaries "
                   "could give (every guess correct).", "tab:gen-audit")


def _federated_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.method), escape(r.source), f"{r.agreement:.3f}", _sci(r.perplexity_private),
             _sci(r.perplexity_general)] for r in frame.itertuples()]
    return tabular(["method", "choice", "agreement", "ppl private", "ppl general"], rows, "llrrr",
                   "Federated pruning (FedPrLLM): layer removal by averaged similarity and sequential Wanda "
                   "masks by FedPrLLM's layer-wise count aggregation (and its row-wise variant), against the centralized and each client's local-only choice. Agreement: Jaccard "
                   "index of the removed layers or pruned weights with the centralized choice.", "tab:gen-federated")


def _selection_table(chosen: pd.DataFrame, draws: pd.DataFrame) -> str:
    agreement = draws.groupby("selection_epsilon")["agreement"].mean()
    rows = []
    for e, value in agreement.items():
        row = chosen[chosen["selection_epsilon"] == e]
        tuned = row.iloc[0] if len(row) else None
        rows.append([epsilon(e), f"{value:.2f}",
                     "--" if tuned is None else f"{tuned.perplexity_private:.1f}",
                     "--" if tuned is None else epsilon(tuned.end_to_end_epsilon_rdp) if math.isinf(
                         tuned.end_to_end_epsilon_rdp) else f"{tuned.end_to_end_epsilon_rdp:.2f}"])
    return tabular([r"selection $\varepsilon$", "agreement", "ppl after DP-LoRA", r"end-to-end $\varepsilon$"],
                   rows, "rrrr", "Private layer selection: mean Jaccard index of the privately chosen layers with "
                   "the non-private choice over noise draws, and for the fine-tuned choices the held-out perplexity "
                   "and the end-to-end $\\varepsilon$ (selection and DP-LoRA composed by the RDP accountant).",
                   "tab:gen-selection")


def _compression_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.model), f"{r.parameter_fraction:.2f}",
             f"{getattr(r, 'deployed_parameter_fraction', math.nan):.2f}", _sci(r.perplexity_private_before),
             _sci(r.perplexity_private), f"{r.prefill_ratio:.2f}", f"{r.decode_ratio:.2f}",
             f"{r.mia_auc_reference:.2f}", f"{r.exposure_trained - r.exposure_heldout:.2f}",
             f"{r.audit_lower_bound:.2f}"] for r in frame.itertuples()]
    eps = float(frame["target_epsilon"].iloc[0])
    return tabular(["model", "params", "deployed", "ppl before", "ppl after", "prefill", "decode", "MIA ref.",
                    "exposure", "audit"], rows, "lrrrrrrrrr",
                   f"Compression baselines, each fine-tuned with DP-LoRA at $\\varepsilon = {eps:g}$ (DPIMP prunes "
                   "during that fine-tuning): non-zero parameters relative to dense before fine-tuning and as "
                   "deployed (LoRA merged), held-out perplexity, prefill and decode time relative to dense "
                   "(measured on CPU), membership AUC, canary exposure minus the never-trained control (bits), "
                   "and the one-run audit's lower bound on $\\varepsilon$.", "tab:gen-compression")


def _healing_table(frame: pd.DataFrame | None, chosen: dict) -> str:
    caption = (f"Every layer-removal strategy at {chosen['removed']} of {chosen['num_layers']} layers, before and "
               "after the same DP-LoRA healing (held-out perplexity, 95\\% interval of the healed model; "
               "\\emph{cosine} ranks layers exactly as ShortGPT's Block Influence).")
    if frame is None:
        return tabular(["strategy", "ppl before", "ppl after", "95\\% interval"],
                       [["--", "--", "--", "--"]], "lrrr", caption + " Not measured in this run: its results "
                       "predate the healing comparison.", "tab:gen-healing")
    rows = [[escape(r.strategy), escape(", ".join(str(r.removed_layers).split())), _sci(r.perplexity_private_before),
             _sci(r.perplexity_private), _range(r, "perplexity_private"), f"{r.healing:.1f}"]
            for r in frame.itertuples()]
    eps = float(frame["target_epsilon"].iloc[0])
    return tabular(["strategy", "removed layers", "ppl before", "ppl after", "95\\% interval", "healing"], rows,
                   "llrrrr", caption.replace("DP-LoRA healing", f"DP-LoRA healing at $\\varepsilon = {eps:g}$"),
                   "tab:gen-healing")


def write(run, t: dict[str, object]) -> list[Path]:
    """Write ``numbers.tex`` and ``tables/*.tex`` through ``run`` (staged, in the manifest).

    Every file passes :func:`prunepriv.report.latex.problems` first; LaTeX that would not compile is not written.
    """
    target = output_dir(run.profile.name)
    files = {f"{target}/numbers.tex": ("tex:numbers", macros(numbers(t),
                                                               f"numbers of profile {run.profile.name}"))}
    files.update({f"{target}/tables/{stem}.tex": (f"tex:table-{stem}", text)
                  for stem, text in tables(t).items()})
    for path, (_, text) in files.items():
        if found := problems(text):
            raise ValueError(f"generated {path} would not compile: {'; '.join(found)}")
    return [run.save_text(artifact_id, text, path) for path, (artifact_id, text) in files.items()]
