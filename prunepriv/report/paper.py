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

from prunepriv.attacks import probes as attacks
from prunepriv.attacks.audit import UNTESTABLE_CEILING
from prunepriv.errors import PrunePrivError
from prunepriv.report.claims import Claim, claims, top_repetitions
from prunepriv.report.latex import epsilon, escape, macros, number, problems, tabular
from prunepriv.privacy.record import is_matched
from prunepriv.privacy.specs import epsilon_label
from prunepriv.report.seeds import collapse_replicates, row_interval


def output_dir(profile_name: str) -> str:
    """``paper/generated`` for the paper profile; other profiles keep theirs under their results."""
    return "paper/generated" if profile_name == "paper" else f"results/{profile_name}/paper"


def _digits(claim_id: str) -> int:
    if claim_id.startswith(("pruning.perplexity", "finetune.perplexity", "federated.wanda.perplexity",
                            "selection.perplexity", "compression.perplexity", "healing.perplexity")):
        return 1
    if claim_id == "federated.similarity.difference":
        return 1
    if claim_id.startswith(("memorization.mia", "latency", "pruning.parameters", "healing.")):
        return 3 if claim_id.startswith(("pruning.parameters", "healing.")) else 2
    return 2


def _claim_value(claim: Claim) -> str:
    if isinstance(claim.value, str):
        return escape(", ".join(claim.value.split()))
    if claim.id == "federated.similarity.difference":          # float rounding, ~1e-6
        return "0" if float(claim.value) == 0 else _power(float(claim.value))
    return number(float(claim.value), _digits(claim.id))


def _claim_interval(claim: Claim) -> str | None:
    """``[low, high]`` of a claim's 95% interval at the value's digits (None without one)."""
    if claim.interval is None or not all(math.isfinite(v) for v in claim.interval):
        return None
    digits = _digits(claim.id)
    return f"[{number(float(claim.interval[0]), digits)}, {number(float(claim.interval[1]), digits)}]"


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
    """Every number the paper quotes, keyed by a dotted name (the macro name is derived from it): each
    claim's value (``claim.ID``) and 95% interval (``claim.ID.ci``), the setup, and the sentences that
    state a finding (``finding.*``, :func:`findings`), so that no sentence can outlive its numbers."""
    found = claims(t)
    values = {f"claim.{c.id}": _claim_value(c) for c in found}
    values.update({f"claim.{c.id}.ci": ci for c in found if (ci := _claim_interval(c)) is not None})
    chosen, runs, pruning = t["pruned_layers.json"], t["finetune.csv"], t["pruning.csv"]
    full = pruning[pruning["removed"] == 0].iloc[0]
    dp = runs[runs["target_epsilon"].map(lambda e: math.isfinite(float(e)))]
    nonprivate = runs[runs["target_epsilon"].map(lambda e: math.isinf(float(e))) & ~runs["model"].map(is_matched)]
    audit, synthetic, memo = t["audit.csv"], t["synthetic.csv"], t["memorization.csv"]
    top = top_repetitions(memo)
    first = dp.iloc[0] if len(dp) else runs.iloc[0]
    stability = chosen.get("choice_stability") or {}
    values.update({
        "setup.layers": str(chosen["num_layers"]),
        "setup.removed": str(chosen["removed"]),
        "setup.strategy": escape(chosen["strategy"]),
        "setup.parameters": f"{full['parameters'] / 1e6:.1f}M",
        "setup.train.records": str(int(first["n_train"])),
        "setup.steps": str(int(first["steps"])),
        "setup.nonprivate.steps": str(int(nonprivate["steps"].iloc[0])) if len(nonprivate) else "--",
        "setup.sample.rate": f"{first['sample_rate']:.3f}",
        "setup.delta": _power(float(first["delta"])),
        "setup.epsilons": ", ".join(epsilon(e) for e in sorted({e for e in runs["target_epsilon"]}, key=lambda e: -e)
                                    if not math.isinf(e)),
        "setup.seeds": str(int(runs.groupby(["model", "target_epsilon"]).size().max())),
        "setup.strategies": str(pruning["strategy"].nunique()),
        "setup.synthetic.samples": str(int(synthetic["samples"].iloc[0])),
        "setup.audit.canaries": str(int(audit["audit_canaries"].iloc[0])),
        "setup.audit.delta": _power(float(audit["audit_delta"].iloc[0])),
        "setup.canary.top": str(top),
        "setup.canaries.per.group": str(int((t["canary_exposure.csv"]["repetitions"] == top).sum()
                                            // max(1, len(memo)))),
        "setup.candidates": str(int(t["canary_exposure.csv"]["candidates"].iloc[0])),
        "setup.eval.records": str(int(runs["eval_records"].iloc[0])) if "eval_records" in runs else "--",
        "setup.choice.same": ("--" if stability.get("same_set") is None
                              else f"{100 * float(stability['same_set']):.0f}"),
        "setup.choice.draws": str(stability.get("draws", "--")),
        "memorization.chance": number(float(memo["exposure_chance"].iloc[0]), 2),
        "memorization.extraction.max": number(float(memo["extraction_excess"].max()), 2),
        "memorization.pii.max": number(float(memo[["pii_leaked_train", "pii_leaked_heldout"]].max().max()), 2),
    })
    for tag, rows in (("dp", dp), ("nonprivate", nonprivate)):      # each kind's recipe ("--": not recorded)
        known = len(rows) and "lora_rank" in rows and pd.notna(rows["lora_rank"].iloc[0])
        r = rows.iloc[0] if known else None
        values.update({f"setup.{tag}.rank": str(int(r["lora_rank"])) if known else "--",
                       f"setup.{tag}.targets": escape(", ".join(str(r["lora_targets"]).split("+"))) if known else "--",
                       f"setup.{tag}.learning.rate": f"{float(r['learning_rate']):g}" if known else "--",
                       f"setup.{tag}.batch": str(int(r["batch_size"])) if known else "--",
                       f"setup.{tag}.epochs": f"{float(r['epochs']):g}" if known else "--"})
    values.update(_baseline_numbers(t))
    values.update(findings(t, found))
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
        "setup.healed.strategies": (escape(", ".join(t["pruning_healed.csv"]["strategy"]))
                                    if "pruning_healed.csv" in t else "--"),
        "compression.mia.min": number(float(comp["mia_auc_reference"].min()), 2),
        "compression.mia.max": number(float(comp["mia_auc_reference"].max()), 2),
    }


def _pick(found: list[Claim], prefix: str) -> list[Claim]:
    return [c for c in found if c.id.startswith(prefix)]


def _ci(claim: Claim, digits: int = 2) -> str:
    if claim.interval is None or not all(math.isfinite(v) for v in claim.interval):
        return ""
    return f" [{number(float(claim.interval[0]), digits)}, {number(float(claim.interval[1]), digits)}]"


def _eps_of(claim_id: str) -> str:
    tag = claim_id.rsplit(".eps", 1)[-1]
    return r"\infty" if tag == "inf" else tag


def findings(t: dict[str, object], found: list[Claim]) -> dict[str, str]:
    """The sentences of the paper that state a finding, as LaTeX (``finding.*`` macros), each written from
    the claims it rests on: a difference is called one only where its interval excludes no effect, a
    share "at least half" only where its whole interval is, a null result with the effect it could have
    detected."""
    return {**_utility_findings(found), **_exposure_findings(found), **_audit_findings(t, found),
            **_control_findings(found)}


def _utility_findings(found: list[Claim]) -> dict[str, str]:
    """Recovered shares of the non-private gain, per DP model and ε."""
    out: dict[str, str] = {}
    for c in _pick(found, "finetune.recovered."):
        model, eps = c.id.split(".")[2], _eps_of(c.id)
        lo, hi = c.interval if c.interval else (math.nan, math.nan)
        verdict = ("at least half of it" if lo >= 0.5 else "less than half of it" if hi < 0.5 else
                   "an interval that includes one half" if math.isfinite(lo) else "one run, no interval")
        out[f"finding.recovered.{model}.eps{c.id.rsplit('.eps', 1)[-1]}"] = (
            f"at $\\varepsilon = {eps}$ the {model} model recovers a share {number(float(c.value), 2)}{_ci(c)} of the "
            f"non-private runs' held-out log-perplexity gain: {verdict}")
    return out


def _exposure_findings(found: list[Claim]) -> dict[str, str]:
    """Memorization without DP and its reduction by DP, from the canaries' excess exposure."""
    out: dict[str, str] = {}
    for c in _pick(found, "memorization.exposure."):
        if ".reduction." in c.id:
            model, tag = c.id.split(".")[3], c.id.rsplit(".eps", 1)[-1]
            if c.holds:
                text = (f"DP at $\\varepsilon = {_eps_of(c.id)}$ lowers the {model} model's excess exposure by "
                        f"{number(float(c.value), 2)}{_ci(c)} bits, an interval that excludes 0")
            elif c.interval and c.interval[1] < 0:
                text = (f"the {model} model's excess exposure without DP minus at $\\varepsilon = {_eps_of(c.id)}$ is "
                        f"{number(float(c.value), 2)}{_ci(c)} bits: the DP runs expose their canaries more, an "
                        "interval that excludes 0")
            else:
                text = (f"the {model} model's excess exposure without DP minus at $\\varepsilon = {_eps_of(c.id)}$ is "
                        f"{number(float(c.value), 2)}{_ci(c)} bits: not a difference this experiment can "
                        "distinguish from none" + (f" ({escape(c.detectable)})" if c.detectable else ""))
            out[f"finding.reduction.{model}.eps{tag}"] = text
        elif c.id.endswith(".epsinf"):
            model = c.id.split(".")[2]
            text = (f"without DP the {model} model's canaries exceed their untuned exposure by "
                    f"{number(float(c.value), 2)}{_ci(c)} bits, ")
            text += ("above the never-trained canaries' excess: it memorizes them" if c.holds else
                     "not distinguishable from the never-trained canaries' excess: it does not memorize them "
                     "measurably")
            out[f"finding.memorized.{model}"] = text
    return out


def _audit_findings(t: dict[str, object], found: list[Claim]) -> dict[str, str]:
    """The audit's positive control and which accountant ε it could test at all."""
    out: dict[str, str] = {}
    by_id = {c.id: c for c in found}
    for c in _pick(found, "audit.bound."):
        if c.id.endswith(".epsinf"):
            model = c.id.split(".")[2]
            out[f"finding.audit.control.{model}"] = (
                f"on the non-private {model} model the audit's lower bound is {number(float(c.value), 2)}"
                + (" (mean over runs), above 0 in every run: the audit sees memorization" if c.holds else
                   f" (mean over runs), above 0 in {_detecting(t['audit.csv'], model)}: these canaries cannot show "
                   "what DP prevents"))
    verdicts = {c.id.split("audit.verdict.")[1]: c.value for c in _pick(found, "audit.verdict.")}
    by_value = lambda e: math.inf if e == r"\infty" else float(e)            # noqa: E731  (8 before 10)
    testable = sorted({_eps_of(k) for k, v in verdicts.items() if "untestable" not in str(v)}, key=by_value)
    untestable_eps = sorted({_eps_of(k) for k, v in verdicts.items() if "untestable" in str(v)}, key=by_value)
    attainable = by_id.get("audit.attainable")
    if attainable is not None:
        text = (f"with {t['audit.csv']['audit_canaries'].iloc[0]} audit canaries no lower bound can exceed "
                f"{number(float(attainable.value), 2)}")
        above = sorted({_eps_of(k) for k, v in verdicts.items() if "untestable" in str(v)
                        and UNTESTABLE_CEILING in _reasons_of(t["audit.csv"], k)}, key=by_value)
        blind = [e for e in untestable_eps if e not in above]
        if above:
            text += (", so the accountant's $\\varepsilon$ of the runs at $\\varepsilon = "
                     + ", ".join(above) + "$ cannot be tested by this audit")
        if blind:
            text += ("; at $\\varepsilon = " + ", ".join(blind) + "$ a bound could exceed the accountant, but the "
                     "non-private control's bound is 0 in at least one run, so a bound below the accountant there "
                     "shows nothing")
        if testable:
            text += ("; at $\\varepsilon = " + ", ".join(testable) + "$ the audit could have exceeded the "
                     "accountant and " + ("did not" if by_id["audit.below_accountant"].holds else "did"))
        out["finding.audit.testable"] = text
    return out


def _detecting(audit: pd.DataFrame, model: str) -> str:
    """``1 of 3 runs``: how many of ``model``'s non-private runs have an audit bound above 0."""
    rows = audit[(audit["model"] == model) & audit["target_epsilon"].map(lambda e: math.isinf(float(e)))]
    return f"{int((rows['epsilon_lower_bound'] > 0).sum())} of {len(rows)} run" + ("s" if len(rows) != 1 else "")


def _reasons_of(audit: pd.DataFrame, tag: str) -> set[str]:
    """Why the runs of claim tag ``MODEL.epsE`` are untestable (:func:`prunepriv.stages.memorization.with_control`'s
    ``reason`` column of ``audit.csv``)."""
    if "reason" not in audit:
        raise PrunePrivError("audit.csv has no `reason` column: it was written by an older stage 05; rerun it")
    model, eps = tag.split(".eps")
    rows = audit[(audit["model"] == model) & (audit["target_epsilon"].map(epsilon_label) == eps)]
    return set(rows["reason"].fillna(""))


def _control_findings(found: list[Claim]) -> dict[str, str]:
    """The utility-matched comparison, the untuned membership control and the healing ratios."""
    out: dict[str, str] = {}
    for c in _pick(found, "memorization.matched."):
        if not c.id.endswith(".exposure"):
            continue
        model = c.id.split(".")[2]
        lo, hi = c.interval if c.interval else (math.nan, math.nan)
        verdict = ("DP memorizes less at equal utility" if hi < 0 else "DP memorizes more at equal utility"
                   if lo > 0 else "not distinguishable at equal utility" if math.isfinite(lo) else "one run")
        out[f"finding.matched.{model}"] = (f"the DP {model} model minus its utility-matched non-private run: excess "
                                           f"exposure {number(float(c.value), 2)}{_ci(c)} bits, {verdict}")
    for c in _pick(found, "memorization.mia."):
        if not c.id.endswith(".epsinf") or c.id.count(".") != 3:
            continue
        model = c.id.split(".")[2]
        out[f"finding.mia.positive.{model}"] = (
            f"on the non-private {model} model the reference-calibrated attack reaches AUC "
            f"{number(float(c.value), 2)}{_ci(c)}" + (", above chance: the attack sees membership where there is "
                                                      "no DP" if c.holds else ", not above chance: at this training "
                                                      "length the attack cannot show what DP prevents"))
    for c in _pick(found, "memorization.mia.untuned."):
        model = c.id.split(".")[3]
        out[f"finding.mia.control.{model}"] = (
            f"the loss attack on the untuned {model} model, which saw neither side, has AUC "
            f"{number(float(c.value), 2)}{_ci(c)}" + (", so members and non-members come from one distribution"
                                                      if c.holds else ", without an interval to judge it by"
                                                      if c.holds is None else ", so the two sides differ in "
                                                      "something other than membership"))
    out["finding.healing"] = _healing_finding(_pick(found, "healing."))
    return out


def _healing_finding(found: list[Claim]) -> str:
    """Each healed strategy against the paper's (paired ratio of held-out perplexity), or why there is none."""
    parts = []
    for c in found:
        if ".over." not in c.id:
            continue
        lo, hi = c.interval if c.interval else (math.nan, math.nan)
        verdict = ("no interval, so no comparison" if not (math.isfinite(lo) and math.isfinite(hi)) else
                   "no difference this evaluation can show" if lo <= 1 <= hi else "worse than the paper's strategy"
                   if lo > 1 else "better than the paper's strategy")
        parts.append(f"after the same DP healing, {escape(c.id.split('.')[1])} has {number(float(c.value), 3)}"
                     f"{_ci(c, 3)} times the paper strategy's held-out perplexity on the same patients: {verdict}")
    if not parts:
        return ("this profile heals the paper's strategy alone, so the question is left to a profile that heals "
                "more than one (\\texttt{full} heals every strategy)")
    return "; ".join(parts)


def tables(t: dict[str, object]) -> dict[str, str]:
    """``{file stem: LaTeX table}`` for the paper's tables."""
    return {"pruning": _pruning_table(t["pruning.csv"], t["pruned_layers.json"]),
            "latency": _latency_table(t["latency.csv"]),
            "finetune": _finetune_table(collapse_replicates(t["finetune.csv"], ["perplexity_private"])),
            "memorization": _memorization_table(t["memorization.csv"], t["canary_exposure.csv"]),
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
                   "by layer-selection strategy (the evaluation protocol of Table~\\ref{tab:gen-finetune}).",
                   "tab:gen-pruning")


def _latency_table(frame: pd.DataFrame) -> str:
    def ratio(r, part: str) -> str:
        low, high = getattr(r, f"{part}_ratio_low", math.nan), getattr(r, f"{part}_ratio_high", math.nan)
        span = f" ({low:.2f}--{high:.2f})" if math.isfinite(low) and r.removed else ""
        return f"{getattr(r, f'{part}_ratio'):.2f}{span}"

    rows = [[str(r.removed), str(r.layers_left), ratio(r, "prefill"), ratio(r, "decode"), f"{r.ideal_ratio:.2f}",
             "--" if not r.removed else ("yes" if getattr(r, "timing_valid", True) else "no")]
            for r in frame.itertuples()]
    return tabular(["removed", "layers", "prefill", "decode", "layers ratio", "idle"], rows, "rrrrrr",
                   "Prefill and decode time relative to the unpruned model: the median of interleaved repeats "
                   "(their range in parentheses). A timing is a claim only when the machine was idle: the repeats "
                   "agree and no ratio falls below the layer count's.", "tab:gen-latency")


def _finetune_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.model), epsilon(r.target_epsilon), str(int(getattr(r, "seeds", 1))),
             epsilon(r.epsilon_rdp) if math.isinf(r.epsilon_rdp) else f"{r.epsilon_rdp:.2f}",
             f"{r.noise_multiplier:.2f}", str(int(r.steps)), _sci(r.perplexity_private_before),
             _sci(r.perplexity_private), _range(r, "perplexity_private"), _sci(r.perplexity_general)]
            for r in frame.itertuples()]
    return tabular(["model", r"target $\varepsilon$", "seeds", r"$\varepsilon$ RDP", r"$\sigma$", "steps",
                    "ppl before", "ppl after", "95\\% interval", "general ppl"], rows, "lrrrrrrrrr",
                   "LoRA fine-tuning under DP-SGD: the accountant's $\\varepsilon$ of each setting's runs and held-out "
                   "perplexity before and after (the mean over its seeds), with a 95\\% interval: across seeds where "
                   "a setting ran more than once, else a bootstrap over held-out patients, which leaves out the "
                   "training noise.", "tab:gen-finetune")


def _optional(row, column: str) -> str:
    """A column that tables written before it existed lack (``--`` there)."""
    value = getattr(row, column, math.nan)
    return "--" if not math.isfinite(value) else f"{value:.2f}"


def _range(row, column: str) -> str:
    """``[low, high]`` of ``column`` from the row's ``_low`` / ``_high`` columns (``--`` when not measured)."""
    span = row_interval(row, column)
    return "--" if span is None else f"[{_sci(span[0])}, {_sci(span[1])}]"


def _memorization_table(frame: pd.DataFrame, exposure: pd.DataFrame) -> str:
    top = top_repetitions(frame)
    excess = f"exposure_excess_r{top}"
    collapsed = collapse_replicates(frame, [excess, "mia_auc_reference"])
    rows = []
    for r in collapsed.to_dict("records"):
        mine = exposure[(exposure["model"] == r["model"]) & (exposure["target_epsilon"] == r["target_epsilon"])]
        trained, control = mine[mine["repetitions"] == top], mine[mine["repetitions"] == 0]
        p = attacks.permutation_p(trained["excess"], control["excess"], trained.get("replicate"),
                                  control.get("replicate"), draws=4000)
        span = row_interval(r, excess)
        auc = row_interval(r, "mia_auc_reference")
        rows.append([escape(r["model"]), epsilon(r["target_epsilon"]), str(int(r.get("seeds", 1))),
                     f"{r[excess]:.2f}" + (f" [{span[0]:.2f}, {span[1]:.2f}]" if span else ""),
                     f"{r['exposure_excess_r0']:.2f}", f"{p:.2g}",
                     f"{r['mia_auc_reference']:.2f}" + (f" [{auc[0]:.2f}, {auc[1]:.2f}]" if auc else ""),
                     f"{r['extraction_excess']:.3f}"])
    return tabular(["model", r"$\varepsilon$", "seeds", f"exposure {top}$\\times$", "never trained", "$p$",
                    "MIA (ref.)", "extraction"], rows, "lrrrrrrr",
                   f"Memorization. Exposure: bits of canaries repeated {top} times in excess of each one's exposure "
                   "under the untuned model, and the same excess for canaries never trained on; $p$: stratified "
                   "permutation test of the two. MIA: reference-calibrated membership AUC (chance 0.5). Brackets: "
                   "95\\% intervals across seeds (one seed: over canaries or records). Extraction: BERTScore excess "
                   "of synthetic text over the held-out control.", "tab:gen-memorization")


def _audit_table(frame: pd.DataFrame) -> str:
    counts = sorted({int(c[len("correct_r"):]) for c in frame.columns if c.startswith("correct_r")})
    rows = []
    for r in frame.to_dict("records"):
        accountant = r["epsilon_rdp_at_audit_delta"]
        rows.append([escape(r["model"]), epsilon(r["target_epsilon"]), str(int(r.get("replicate", 0)) + 1),
                     epsilon(accountant) if math.isinf(accountant) else f"{accountant:.2f}",
                     *[f"{int(r[f'correct_r{n}'])}" if math.isfinite(r.get(f"correct_r{n}", math.nan)) else "--"
                       for n in counts],
                     f"{r['epsilon_lower_bound']:.2f}", escape(str(r.get("verdict", "")))])
    header = (["model", r"$\varepsilon$", "seed", r"accountant $\varepsilon$"] + [f"of {n}" for n in counts]
              + ["bound", "verdict"])
    return tabular(header, rows, "lrrr" + "r" * len(counts) + "rl",
                   "One-run privacy audit: correct guesses at every guess count (the most and least likely members "
                   "by the secret's loss drop), the 95\\% lower bound on $\\varepsilon$ (Bonferroni over the counts) "
                   "and its verdict against the accountant's $\\varepsilon$ at the audit's $\\delta$: "
                   "\\emph{untestable} where even every guess correct could not exceed it, or where the model's "
                   "non-private control is \\emph{blind}; on the non-private runs \\emph{detects} when the bound "
                   "is above 0.", "tab:gen-audit")


def _federated_table(frame: pd.DataFrame) -> str:
    rows = [[escape(r.method), escape(r.source), f"{r.agreement:.3f}", _sci(r.perplexity_private),
             _sci(r.perplexity_general)] for r in frame.itertuples()]
    return tabular(["method", "choice", "agreement", "ppl private", "ppl general"], rows, "llrrr",
                   "Federated pruning (FedPrLLM): layer removal by averaged similarity and sequential Wanda "
                   "masks by FedPrLLM's layer-wise count aggregation (and its row-wise variant), against the "
                   "centralized and each client's local-only choice, all measured on the clients' own records. "
                   "Agreement: Jaccard index of the removed layers or pruned weights with the centralized choice.",
                   "tab:gen-federated")


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
             f"{r.mia_auc_reference:.2f}", _optional(r, "audit_lower_bound")] for r in frame.itertuples()]
    eps = float(frame["target_epsilon"].iloc[0])
    return tabular(["model", "params", "deployed", "ppl before", "ppl after", "prefill", "decode", "MIA ref.",
                    "audit"], rows, "lrrrrrrrr",
                   f"Compression baselines, each fine-tuned once with DP-LoRA at $\\varepsilon = {eps:g}$: non-zero "
                   "parameters relative to dense before fine-tuning and as deployed (LoRA merged), held-out "
                   "perplexity, prefill and decode time relative to dense (measured on CPU), membership AUC and "
                   "the one-run audit's lower bound on $\\varepsilon$. The layer-removal row is the first seed's run "
                   "of Table~\\ref{tab:gen-finetune} (which averages its seeds).", "tab:gen-compression")


def _healing_table(frame: pd.DataFrame | None, chosen: dict) -> str:
    caption = (f"Layer-removal strategies at {chosen['removed']} of {chosen['num_layers']} layers, before and "
               "after the same DP-LoRA healing (held-out perplexity; one run each, so the bootstrap interval "
               "holds the evaluation noise, not the training noise). Ratio: perplexity over the paper "
               "strategy's on the same patients, with a paired interval; "
               "\\emph{cosine} ranks layers exactly as ShortGPT's Block Influence.")
    if frame is None:
        raise PrunePrivError("pruning_healed.csv is missing: run stage 06 (`prunepriv reproduce`) first")
    rows = [[escape(r.strategy), escape(", ".join(str(r.removed_layers).split())), _sci(r.perplexity_private_before),
             _sci(r.perplexity_private), _range(r, "perplexity_private"),
             "--" if not math.isfinite(getattr(r, "ratio_to_paper", math.nan)) or r.strategy == chosen["strategy"]
             else f"{r.ratio_to_paper:.3f} [{r.ratio_to_paper_low:.3f}, {r.ratio_to_paper_high:.3f}]"]
            for r in frame.itertuples()]
    eps = float(frame["target_epsilon"].iloc[0])
    return tabular(["strategy", "removed layers", "ppl before", "ppl after", "95\\% interval", "ratio"], rows,
                   "llrrrl", caption.replace("DP-LoRA healing", f"DP-LoRA healing at $\\varepsilon = {eps:g}$"),
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
