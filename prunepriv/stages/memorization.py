"""Stage-level steps of notebooks 04 (synthetic data) and 05 (memorization).

Every fine-tuned model of the ε grid is loaded from its run folder (stage
03), sampled from, and attacked; each figure sits next to its control:
held-out records, held-out PII values, held-out canaries, and the
non-private model of the same grid. Per-run results are written as soon as
they exist, so an interrupted stage resumes where it stopped.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from prunepriv.attacks import probes as attacks
from prunepriv.attacks.audit import UNTESTABLE_BLIND, UNTESTABLE_CEILING, audit, audit_curve
from prunepriv.attacks.bertscore import f1, pairwise_f1
from prunepriv.compress.pruning import remove_layers
from prunepriv.data import corpus_for
from prunepriv.errors import DataError, ModelError
from prunepriv.lm.evaluation import perplexity
from prunepriv.lm.generation import SamplingSpec, continue_greedy, sample_records
from prunepriv.lm.lora import load_adapter
from prunepriv.lm.models import load_model
from prunepriv.lm.precision import precision_of
from prunepriv.loaders import jsonl_texts, read_utf8
from prunepriv.privacy.record import FinetuneRun, base_model, is_matched, runs_of
from prunepriv.privacy.specs import epsilon_for
from prunepriv.progress import tqdm
from prunepriv.results import (
    atomic_write_json,
    atomic_write_text,
    relative_to_cwd,
    sha256_file,
)

ATTACKS_VERSION = 6   # bump when an attack's computation changes, so saved per-run results are redone


def tuned_model(bases: dict, run: FinetuneRun):
    """A fresh copy of the run's base model (pruned or not) with the run's LoRA adapter."""
    name = base_model(run.model)
    if name not in bases:
        raise ModelError(f"no base model for {run.model!r} runs (have {', '.join(bases)})")
    return load_adapter(copy.deepcopy(bases[name]), run.adapter_dir).eval()


def stage_inputs(profile, pruned: dict):
    """What notebooks 04 and 05 start from besides stage 03's runs table: the untuned
    base models (unpruned, and pruned by stage 02's choice ``pruned``), the tokenizer and the corpus."""
    base, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    bases = {"unpruned": base.eval(), "pruned": remove_layers(copy.deepcopy(base), pruned["layers"]).eval()}
    return bases, tokenizer, corpus_for(profile)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _adapter_digest(run: FinetuneRun) -> str:
    return sha256_file(run.adapter_dir / "adapter_model.safetensors")


# --------------------------------------------------------------------------
# notebook 04: synthetic data

def load_samples(path: str | Path) -> list[str]:
    """Texts of a synthetic-samples JSONL file; an empty set is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no synthetic samples at {path}; run stage 04 first")
    texts = jsonl_texts(path, read_utf8(path), "text", allow_empty=True) if path.stat().st_size else []
    if not texts:
        raise DataError(f"{path} holds no generated text")
    return texts


def synthetic_for_run(model, tokenizer, run: FinetuneRun, spec: SamplingSpec, seed: int,
                      out_dir: Path) -> tuple[list[str], Path]:
    """Sample (or reload) one run's synthetic records, saved as JSONL with their settings."""
    path = out_dir / f"{run.label}.jsonl"
    key = _digest(asdict(spec), seed, _adapter_digest(run), precision_of(model))
    if path.is_file():
        first = json.loads(path.read_text().splitlines()[0])
        if first.get("settings") == key:
            return load_samples(path), path
    texts = sample_records(model, tokenizer, spec, seed)
    lines = [json.dumps({"text": t, "model": run.model, "target_epsilon": str(run.target_epsilon),
                         "seed": seed, "settings": key}) for t in texts]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return texts, path


def synthetic_sweep(runs: pd.DataFrame, bases: dict, tokenizer, corpus, cfg, seed: int, out_dir) -> pd.DataFrame:
    """Sample every run's synthetic records and measure their quality (``tab:synthetic``).

    Quality: perplexity under the untuned unpruned model (one judge for all
    runs) and BERTScore F1 of each sample to its closest held-out record.
    """

    out_dir = Path(out_dir)
    spec = SamplingSpec.from_config(cfg)
    judge = bases["unpruned"]
    references = corpus.texts("heldout", limit=cfg.quality_references, include_canaries=False)
    rows = []
    for run in tqdm(runs_of(runs), desc="synthetic data", leave=False):
        model = tuned_model(bases, run)
        texts, path = synthetic_for_run(model, tokenizer, run, spec, seed, out_dir)
        del model
        nonempty = [t for t in texts if t.strip()]
        best = (pairwise_f1(nonempty, references, precision=precision_of(judge)).max(1) if nonempty
                else np.array([np.nan]))
        rows.append({
            "model": run.model, "target_epsilon": run.target_epsilon, "replicate": run.replicate,
            "samples": len(texts),
            "empty_samples": len(texts) - len(nonempty),
            "mean_tokens": float(np.mean([len(tokenizer(t).input_ids) for t in texts])),
            "perplexity_base": perplexity(judge, tokenizer, nonempty, cfg.max_length, cfg.batch_size)
            if nonempty else float("nan"),
            "bertscore_f1_heldout": float(np.mean(best)),
            "samples_file": relative_to_cwd(path),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# notebook 05: memorization

def note_records(corpus, split: str) -> list:
    """Records of a split that are not canaries."""
    return [r for r in corpus.splits[split] if r.canary is None]


def size_matched(records: list, n: int, seed: int) -> list:
    """A seeded random subset of ``n`` records (the training side of every train-vs-held-out comparison)."""
    if len(records) <= n:
        return list(records)
    return random.Random(seed).sample(records, n)


def kind_matched(members: list, nonmembers: list, seed: int) -> tuple[list, list]:
    """Members and non-members drawn from one distribution: for each non-member, the member of the same note
    type whose text is closest in length (ties broken in a seeded random order; fewer non-members where
    the members of a type run short), so that a membership attack can score neither the note type nor the
    length instead of membership. Records without a kind count as one kind."""
    rng = random.Random(seed)
    pool: dict[str, list] = {}
    for record in members:
        pool.setdefault(getattr(record, "kind", ""), []).append(record)
    for records in pool.values():
        rng.shuffle(records)                                  # the tie-break order
    chosen_members, chosen_nonmembers = [], []
    for record in nonmembers:
        inside = pool.get(getattr(record, "kind", ""), [])
        if not inside:
            continue
        best = min(range(len(inside)), key=lambda i: abs(len(inside[i].text) - len(record.text)))
        chosen_members.append(inside.pop(best))
        chosen_nonmembers.append(record)
    return chosen_members, chosen_nonmembers


def membership_texts(corpus, n: int, seed: int) -> tuple[list[str], list[str]]:
    """The texts of the membership attack: up to ``n`` held-out records and as many training records of the
    same note types (:func:`kind_matched`)."""
    members, nonmembers = kind_matched(note_records(corpus, "train"), note_records(corpus, "heldout")[:n], seed)
    return [r.text for r in members], [r.text for r in nonmembers]


class References:
    """Untuned-model log-probabilities, computed once per base model."""

    def __init__(self, bases: dict, tokenizer, max_length: int, batch_size: int) -> None:
        self.bases, self.tokenizer = bases, tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self._cache: dict[tuple, list[np.ndarray]] = {}   # (model, texts, end or 'secrets')
        self._exposure: dict[tuple[str, str, int, int], float] = {}    # (model, canary text, candidates, seed)

    def logprobs(self, model_name: str, texts: list[str], end: bool = True) -> list[np.ndarray]:
        key = (model_name, tuple(texts), end)
        if key not in self._cache:
            self._cache[key] = attacks.record_logprobs(self.bases[model_name], self.tokenizer, texts,
                                                       self.max_length, self.batch_size, end=end)
        return self._cache[key]

    def exposure(self, model_name: str, canary, n_candidates: int, seed: int) -> float:
        """Exposure of ``canary`` in the untuned model, on the candidates the tuned model is ranked on
        (cached by its text: replicates give a canary id other secrets)."""
        key = (model_name, canary.text, n_candidates, seed)
        if key not in self._exposure:
            self._exposure[key] = attacks.canary_exposure(self.bases[model_name], self.tokenizer, canary,
                                                          n_candidates, seed).exposure
        return self._exposure[key]


def paired_exposure(model, untuned_exposure, tokenizer, canaries: list, n_candidates: int, seed: int) -> list[dict]:
    """Exposure of each canary in ``model`` beside its paired control, ``untuned_exposure(canary)``: its
    exposure in the un-fine-tuned model on the same candidates. ``excess`` (the difference) removes the
    base model's prior for that very secret, which the never-trained canaries (other secrets) cannot."""
    rows = []
    for canary in tqdm(canaries, desc="exposure", leave=False):
        tuned = asdict(attacks.canary_exposure(model, tokenizer, canary, n_candidates, seed))
        control = untuned_exposure(canary)
        rows.append({**tuned, "exposure_untuned": control, "excess": tuned["exposure"] - control})
    return rows


def mean_excess(exposure: list[dict], trained: bool) -> float:
    """Mean paired excess exposure of the trained (``repetitions > 0``) or never-trained canaries."""
    values = [e["excess"] for e in exposure if (e["repetitions"] > 0) == trained]
    return float(np.mean(values)) if values else float("nan")


def audit_scores(model, tokenizer, canaries: list, batch_size: int) -> np.ndarray:
    """Membership score of each audit canary: the tuned model's log-probability of its secret's tokens
    (:func:`prunepriv.attacks.probes.secret_logprobs`; the name before it is not what is memorized).

    Not calibrated by the untuned model: fine-tuning on hundreds of random secrets flattens the base
    model's preferences among digits, so subtracting them adds noise rather than removing it (a pilot
    of the paper profile, non-private pruned model, seed 0: 31 of 51 guesses correct calibrated, 46 of
    51 uncalibrated; docs/measurements.md). The audit's validity rests on the inclusion coins alone, so
    any score fixed before the guesses is a valid one (Steinke et al. 2023, Sec. 3)."""
    return np.array([lp.sum() for lp in attacks.secret_logprobs(model, tokenizer, canaries, batch_size)])


def accountant_at(run: FinetuneRun, delta: float) -> dict[str, float]:
    """The run's accountant ε (RDP and PRV) at the audit's δ, from its logged σ, q and steps.

    The audit bounds ε at one δ; it is compared with the accountant's ε at
    that same δ (a run's headline ε is at its training δ).
    """
    sigma, q, steps = float(run.noise_multiplier), float(run.sample_rate), int(run.steps)
    if not math.isfinite(float(run.epsilon_rdp)) or sigma <= 0:
        return {"epsilon_rdp": math.inf, "epsilon_prv": math.inf}
    return {"epsilon_rdp": epsilon_for(sigma, q, steps, delta, "rdp"),
            "epsilon_prv": epsilon_for(sigma, q, steps, delta, "prv")}


def attack_run(model, run: FinetuneRun, corpus, tokenizer, refs: References, samples: list[str], cfg,
               seed: int) -> dict:
    """Every memorization measurement of one fine-tuned model, with its controls."""
    out: dict = {"model": run.model, "target_epsilon": run.target_epsilon, "replicate": run.replicate,
                 "epsilon_rdp": float(run.epsilon_rdp), "run": run.label}
    base = base_model(run.model)
    train_notes, heldout_notes = note_records(corpus, "train"), note_records(corpus, "heldout")
    out["mia"] = membership_attacks(model, base, tokenizer, refs, train_notes, heldout_notes, cfg, seed)
    out["mia_untuned"] = untuned_membership(base, tokenizer, refs, train_notes, heldout_notes, cfg, seed)

    # canary exposure: trained canaries and never-trained ones (the control), each beside its untuned exposure
    out["exposure"] = paired_exposure(model, lambda c: refs.exposure(base, c, cfg.n_candidates, seed),
                                      tokenizer, corpus.canaries_for("exposure"), cfg.n_candidates, seed)
    out["chance_exposure"] = attacks.chance_exposure(cfg.n_candidates)

    # one-run audit (Steinke et al. 2023) on the audit canaries
    audit_canaries = corpus.canaries_for("audit")
    if audit_canaries:
        out["audit"] = canary_audit(model, run, tokenizer, audit_canaries, cfg)
    out.update(extraction_attacks(model, base, tokenizer, refs, samples, train_notes, heldout_notes, cfg, seed))

    # untargeted PII leakage: values only training records hold, versus values only held-out records hold,
    # each inside the window of tokens the model trains on (both sides alike)
    window = attacks.window_chars(tokenizer, [r.text for split in ("train", "heldout") for r in corpus.splits[split]],
                                  cfg.max_length)
    train_pii, held_pii = (attacks.exclusive_pii(corpus, split, window=window) for split in ("train", "heldout"))
    out["pii"] = {"train_values": len(train_pii), "heldout_values": len(held_pii),
                  "leaked_train": attacks.leaked_fraction(samples, train_pii),
                  "leaked_heldout": attacks.leaked_fraction(samples, held_pii)}

    # prefix attack on training and held-out records
    splits = (("train", size_matched(train_notes, len(train_notes), seed + 2)), ("heldout", heldout_notes))
    out["prefix"] = {split: prefix_attack(model, tokenizer, records, cfg) for split, records in splits}
    return out


def membership_attacks(model, base_name: str, tokenizer, refs: References, train_notes: list, heldout_notes: list,
                       cfg, seed: int) -> list[dict]:
    """Membership inference: training versus held-out records (equal numbers, the same note types)."""
    members, nonmembers = kind_matched(train_notes, heldout_notes[: cfg.mia_samples], seed)
    members, nonmembers = [r.text for r in members], [r.text for r in nonmembers]
    texts = members + nonmembers
    target_lp = attacks.record_logprobs(model, tokenizer, texts, cfg.max_length, cfg.batch_size)
    windows = attacks.scored_texts(tokenizer, texts, cfg.max_length)
    return attacks.membership_inference(windows[:len(members)], windows[len(members):], target_lp,
                                        refs.logprobs(base_name, texts), cfg.min_k)


def untuned_membership(base_name: str, tokenizer, refs: References, train_notes: list, heldout_notes: list,
                       cfg, seed: int) -> dict:
    """The control of every membership attack: the loss attack on the *untuned* model, which saw neither
    side, on the same members and non-members. Its AUC is 0.5 up to sampling noise when the two sides come
    from one distribution (:func:`kind_matched`); an interval excluding 0.5 means the sides differ in
    something other than membership, and every AUC of the tuned models would be confounded by it."""
    members, nonmembers = kind_matched(train_notes, heldout_notes[: cfg.mia_samples], seed)
    texts = [r.text for r in members + nonmembers]
    loss = np.array([lp.mean() for lp in refs.logprobs(base_name, texts)])
    n = len(members)
    low, high = attacks.bootstrap_interval(loss[:n], loss[n:], attacks.roc_auc)
    return {"auc": attacks.roc_auc(loss[:n], loss[n:]), "auc_low": low, "auc_high": high,
            "members": n, "nonmembers": len(nonmembers)}


def canary_audit(model, run: FinetuneRun, tokenizer, canaries: list, cfg) -> dict:
    """The one-run audit's ε lower bound beside the run's accountant ε at the audit's δ."""
    scores = audit_scores(model, tokenizer, canaries, cfg.batch_size)
    included = [c.in_train for c in canaries]
    result = audit(scores, included, cfg.audit_delta, cfg.audit_confidence)
    curve = audit_curve(scores, included, cfg.audit_delta, cfg.audit_confidence)
    return {**asdict(result), "curve": curve, **accountant_at(run, cfg.audit_delta)}


def extraction_attacks(model, base_name: str, tokenizer, refs: References, samples: list[str], train_notes: list,
                       heldout_notes: list, cfg, seed: int) -> dict:
    """Extraction (``extraction``) and suspicion rankings (``ranking``): synthetic samples against
    training and held-out records of equal number."""
    bs, ml = cfg.batch_size, cfg.max_length
    held = [r.text for r in heldout_notes]
    train_ref = [r.text for r in size_matched(train_notes, len(held), seed + 1)]
    kept = [s for s in samples if s.strip()]
    precision = precision_of(model)
    f1_train = pairwise_f1(kept, train_ref, precision=precision)
    f1_held = pairwise_f1(kept, held, precision=precision)
    extraction = attacks.extraction_summary(f1_train, f1_held, cfg.near_copy_f1)
    sample_lp = attacks.record_logprobs(model, tokenizer, kept, ml, bs, end=False)   # samples carry no EOS
    ref_lp = refs.logprobs(base_name, kept, end=False)
    ranking = {name: attacks.top_k_copies(metric, f1_train, f1_held, cfg.rank_top_k, cfg.near_copy_f1)
               for name, metric in attacks.ranking_metrics(attacks.scored_texts(tokenizer, kept, ml, end=False), sample_lp,
                                                               ref_lp).items()}
    return {"extraction": extraction, "ranking": ranking}


def prefix_attack(model, tokenizer, records: list, cfg) -> dict:
    """Greedy continuations of record prefixes against the true suffixes (tokens, text, PII)."""
    probes = attacks.prefix_probes(tokenizer, records, cfg.prefix_tokens, cfg.suffix_tokens, cfg.prefix_records)
    generated = continue_greedy(model, [p.prompt for p in probes], cfg.suffix_tokens,
                                int(tokenizer.pad_token_id or 0), cfg.batch_size)
    truth = [p.suffix for p in probes]
    gen_text = tokenizer.batch_decode(generated, skip_special_tokens=True)
    true_text = tokenizer.batch_decode(truth, skip_special_tokens=True)
    pii_rate, pii_n = attacks.targeted_pii_rate(gen_text, probes)
    return {
        "records": len(probes), "token_match": attacks.token_match_rate(generated, truth),
        "exact_suffix": attacks.exact_suffix_rate(generated, truth),
        "bertscore_f1": float(np.mean(f1(gen_text, true_text, precision=precision_of(model)))) if probes else float("nan"),
        "pii_values": pii_n, "pii_leaked": pii_rate,
    }


def run_samples(synthetic: pd.DataFrame, run: FinetuneRun) -> list[str]:
    """The synthetic samples of ``run``, from stage 04's table (its ``samples_file`` column)."""
    match = synthetic[(synthetic["model"] == run.model) & (synthetic["target_epsilon"] == run.target_epsilon)
                      & (synthetic.get("replicate", 0) == run.replicate)]
    if not len(match):
        raise DataError(f"no synthetic samples for the {run.model} model at ε = {run.target_epsilon}; "
                        "run stage 04 first")
    return load_samples(match.iloc[0]["samples_file"])


def memorization_sweep(runs: pd.DataFrame, bases: dict, tokenizer, corpus, cfg, seed: int,
                       synthetic: pd.DataFrame, out_dir) -> list[dict]:
    """Attack every fine-tuned model with its samples listed in ``synthetic`` (stage 04's table);
    each run's result is saved (and reused) as JSON."""
    out_dir = Path(out_dir)
    refs = References(bases, tokenizer, cfg.max_length, cfg.batch_size)
    results = []
    for run in tqdm(runs_of(runs), desc="memorization attacks", leave=False):
        samples = run_samples(synthetic, run)
        path = out_dir / f"{run.label}.json"
        trained_on = corpus.for_replicate(run.replicate)        # a replicate's own canaries
        key = _digest(ATTACKS_VERSION, asdict(cfg), seed, _adapter_digest(run), samples, trained_on.summary(),
                      [c.text for c in trained_on.canaries], precision_of(bases["unpruned"]))
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("settings") == key:
                results.append(saved)
                continue
        model = tuned_model(bases, run)
        result = attack_run(model, run, trained_on, tokenizer, refs, samples, cfg, seed)
        del model
        result["settings"] = key
        atomic_write_json(path, result)
        results.append(result)
    return results


# --------------------------------------------------------------------------
# tables

def _exposure_by_reps(result: dict, n_candidates: int) -> dict[str, float]:
    """Per repetition group r: mean exposure (``exposure_rR``), its exact chance band for a group of that
    size (``exposure_rR_chance_low/high``, :func:`prunepriv.attacks.probes.chance_exposure_band`), mean
    paired excess over each canary's untuned exposure (``exposure_excess_rR``, with a bootstrap interval
    over the canaries, ``_low``/``_high``) and, for trained groups, the
    permutation p-value of that excess against the never-trained canaries' (``exposure_excess_rR_p``)."""
    frame = pd.DataFrame(result["exposure"])
    if frame.empty:
        return {}
    out: dict[str, float] = {}
    control = frame[frame["repetitions"] == 0]["excess"]
    for r, g in frame.groupby("repetitions"):
        tag = f"r{int(r)}"
        out[f"exposure_{tag}"] = float(g["exposure"].mean())
        out[f"exposure_{tag}_chance_low"], out[f"exposure_{tag}_chance_high"] = attacks.chance_exposure_band(
            len(g), n_candidates)
        out[f"exposure_excess_{tag}"] = float(g["excess"].mean())
        out[f"exposure_excess_{tag}_low"], out[f"exposure_excess_{tag}_high"] = attacks.mean_interval(g["excess"])
        if r > 0:
            out[f"exposure_excess_{tag}_p"] = attacks.permutation_p(g["excess"], control)
    return out


def memorization_table(results: list[dict]) -> pd.DataFrame:
    """``tab:memorization``: one row per model and ε, each metric next to its control."""
    rows = []
    for r in results:
        mia = {m["attack"]: m for m in r["mia"]}
        ex, pre, pii = r["extraction"], r["prefix"], r["pii"]
        exposure = _exposure_by_reps(r, int(r["exposure"][0]["candidates"]) if r["exposure"] else 0)
        trained = [e["exposure"] for e in r["exposure"] if e["repetitions"] > 0]
        row = {
            "model": r["model"], "target_epsilon": r["target_epsilon"], "replicate": r.get("replicate", 0),
            "epsilon_rdp": r["epsilon_rdp"],
            "extraction_excess": ex["extraction_excess"], "closer_to_train": ex["closer_to_train"],
            "near_copies_train": ex["near_copies_train"], "near_copies_heldout": ex["near_copies_heldout"],
            "pii_leaked_train": pii["leaked_train"], "pii_leaked_heldout": pii["leaked_heldout"],
            "prefix_match_train": pre["train"]["token_match"], "prefix_match_heldout": pre["heldout"]["token_match"],
            "prefix_pii_train": pre["train"]["pii_leaked"], "prefix_pii_heldout": pre["heldout"]["pii_leaked"],
            "exposure_trained": float(np.mean(trained)) if trained else float("nan"),
            "exposure_heldout": exposure.get("exposure_r0", float("nan")),
            "exposure_chance": r["chance_exposure"],
            "exposure_excess_trained": mean_excess(r["exposure"], trained=True),
            "exposure_excess_heldout": mean_excess(r["exposure"], trained=False),
            **{k: v for k, v in exposure.items() if k != "exposure_r0"},
            **{f"mia_auc_{a}": mia[a]["auc"] for a in attacks.MIA_ATTACKS},
            **{f"mia_auc_{a}_{side}": mia[a].get(f"auc_{side}", math.nan) for a in attacks.MIA_ATTACKS
               for side in ("low", "high")},
            **{f"mia_auc_untuned{suffix}": r.get("mia_untuned", {}).get(f"auc{suffix}", math.nan)
               for suffix in ("", "_low", "_high")},
            "mia_tpr_at_1pct_fpr_loss": mia["loss"][attacks.tpr_column(0.01)],
            "mia_tpr_at_1pct_fpr_loss_low": mia["loss"].get(attacks.tpr_column(0.01) + "_low", math.nan),
            "mia_tpr_at_1pct_fpr_loss_high": mia["loss"].get(attacks.tpr_column(0.01) + "_high", math.nan),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def mia_table(results: list[dict]) -> pd.DataFrame:
    """Every membership attack of every run: AUC and TPR at 1% and 0.1% FPR."""
    return pd.DataFrame([{"model": r["model"], "target_epsilon": r["target_epsilon"],
                          "replicate": r.get("replicate", 0), **m} for r in results for m in r["mia"]])


def exposure_table(results: list[dict]) -> pd.DataFrame:
    """One row per canary and run."""
    return pd.DataFrame([{"model": r["model"], "target_epsilon": r["target_epsilon"],
                          "replicate": r.get("replicate", 0), **e} for r in results for e in r["exposure"]])


def audit_verdict(bound: float, attainable: float, accountant: float) -> str:
    """What one audit says about its run's accountant: ``fails`` (the lower bound exceeds the accountant's ε:
    a broken accountant or trainer), ``untestable`` (even every guess correct could not exceed it: these
    canaries cannot test this ε), ``holds`` (it could have failed and did not); for a non-private run
    (accountant ε = ∞), the positive control: ``detects`` when the bound is above 0, else ``blind``
    (:func:`with_control` then demotes its model's ``holds`` to ``untestable``)."""
    if math.isinf(accountant):
        return "detects" if bound > 0 else "blind"
    if bound > accountant + 1e-9:
        return "fails"
    return "untestable" if attainable <= accountant else "holds"


def audit_table(results: list[dict]) -> pd.DataFrame:
    """``tab:audit``: the audit's ε lower bound beside the accountant's ε, its verdict
    (:func:`audit_verdict`, read beside its positive control by :func:`with_control`, which adds ``control``
    and ``reason``), and the correct guesses and bound at every guess count (``correct_rN``,
    ``bound_rN`` for N guesses)."""
    rows = []
    for r in results:
        if "audit" not in r:
            continue
        a = r["audit"]
        accountant = min(a["epsilon_rdp"], a["epsilon_prv"])
        row = {"model": r["model"], "target_epsilon": r["target_epsilon"], "replicate": r.get("replicate", 0),
               "epsilon_rdp_at_audit_delta": a["epsilon_rdp"], "epsilon_prv_at_audit_delta": a["epsilon_prv"],
               "audit_delta": a["delta"],
               "epsilon_lower_bound": a["epsilon_lower_bound"], "epsilon_attainable": a["epsilon_attainable"],
               "confidence": a["confidence"],
               "audit_canaries": a["n_examples"], "guesses": a["n_guesses"], "correct": a["n_correct"],
               "bound_below_accountant": a["epsilon_lower_bound"] <= accountant,
               "verdict": audit_verdict(a["epsilon_lower_bound"], a["epsilon_attainable"], accountant)}
        for point in a.get("curve", []):
            row[f"correct_r{point['guesses']}"] = point["correct"]
            row[f"bound_r{point['guesses']}"] = point["epsilon_lower_bound"]
        rows.append(row)
    return with_control(pd.DataFrame(rows))


def with_control(table: pd.DataFrame) -> pd.DataFrame:
    """Each private run's verdict read beside its positive control: where the table holds non-private runs
    of the same model and any of them is ``blind`` (bound 0: the audit did not see memorization without
    DP), a private run's ``holds`` is vacuous and becomes ``untestable``; ``control`` names the controls'
    verdicts (``none`` where the model has no non-private run) and ``reason`` says why a run is
    ``untestable``: ``ceiling`` (its accountant's ε is above any bound these canaries can give) or
    ``blind control`` (demoted here); empty for every other verdict."""
    if not len(table):
        return table
    table = table.copy()
    private = ~table["target_epsilon"].map(lambda e: math.isinf(float(e)))
    control = {model: " ".join(sorted(set(group.loc[~private[group.index], "verdict"]))) or "none"
               for model, group in table.groupby("model")}
    table["control"] = table["model"].map(control)
    table["reason"] = np.where(table["verdict"] == "untestable", UNTESTABLE_CEILING, "")
    blind = private & table["control"].str.contains("blind") & (table["verdict"] == "holds")
    table.loc[blind, "verdict"] = "untestable"
    table.loc[blind, "reason"] = UNTESTABLE_BLIND
    return table


NO_PII = "the records carry no PII annotations (only the synthetic corpus records its PII spans)"
NO_CANARIES = ("no {what} canaries in the training data: insert them with `prunepriv canaries{flag}` before "
               "fine-tuning and pass --canaries to the audit")


def skipped_measurements(result: dict) -> list[tuple[str, str]]:
    """(measurement, why it was not made) for every attack the data could not support."""
    skipped = []
    if not result["pii"]["train_values"]:
        skipped += [("PII values written verbatim (fraction)", NO_PII), ("prefix attack: suffix PII completed", NO_PII)]
    if not any(e["repetitions"] > 0 for e in result["exposure"]):
        skipped.append(("canary exposure (bits, mean)", NO_CANARIES.format(what="exposure", flag="")))
    if "audit" not in result:
        skipped.append(("audit: ε lower bound", NO_CANARIES.format(what="audit", flag=" --n-audit-canaries N")))
    return skipped


def report_rows(result: dict) -> list[tuple[str, float, float | None, str]]:
    """(measurement, value on trained data, control value, what the control is) for a printed report;
    measurements in :func:`skipped_measurements` are left out."""
    nan = float("nan")
    ex, pii, pre = result["extraction"], result["pii"], result["prefix"]
    rows = [
        ("extraction: mean nearest BERTScore F1", ex["f1_nearest_train"], ex["f1_nearest_heldout"],
         "held-out records (equal number)"),
        ("extraction: near-copies among samples", ex["near_copies_train"], ex["near_copies_heldout"],
         "held-out records (equal number)"),
        ("PII values written verbatim (fraction)", pii["leaked_train"], pii["leaked_heldout"],
         "PII values only held-out records hold"),
        ("prefix attack: token match rate", pre["train"]["token_match"], pre["heldout"]["token_match"],
         "prefixes of held-out records"),
        ("prefix attack: suffix PII completed", pre["train"]["pii_leaked"], pre["heldout"]["pii_leaked"],
         "prefixes of held-out records"),
    ]
    skipped = {name for name, _ in skipped_measurements(result)}
    rows = [row for row in rows if row[0] not in skipped]
    trained = [e["exposure"] for e in result["exposure"] if e["repetitions"] > 0]
    heldout = [e["exposure"] for e in result["exposure"] if e["repetitions"] == 0]
    if trained:
        rows.append(("canary exposure (bits, mean)", float(np.mean(trained)),
                     float(np.mean(heldout)) if heldout else nan,
                     f"never-trained canaries ({len(trained)} trained, {len(heldout)} never trained)"))
        rows.append(("canary exposure in excess of the untuned model (bits, mean)",
                     mean_excess(result["exposure"], trained=True), mean_excess(result["exposure"], trained=False),
                     "never-trained canaries; each canary's own exposure before fine-tuning is subtracted "
                     "(its paired control), 0 by chance"))
    for m in result["mia"]:
        lo, hi = attacks.auc_interval(m["auc"], int(m["members"]), int(m["nonmembers"]))
        rows.append((f"membership inference AUC ({m['attack']})", m["auc"], 0.5,
                     f"chance; AUC 95% interval [{lo:.2f}, {hi:.2f}] ({m['members']} vs {m['nonmembers']} records)"))
    if "audit" in result:
        a = result["audit"]
        rows.append((f"audit: ε lower bound ({a['confidence']:.0%} confidence)", a["epsilon_lower_bound"],
                     a["epsilon_rdp"], f"accountant ε (RDP) at δ = {a['delta']:.0e}; the bound must not exceed it; "
                     f"{a['n_examples']} canaries can show at most ε ≥ {a['epsilon_attainable']:.2f}"))
    return rows


def sample_preview(runs: pd.DataFrame, synthetic: pd.DataFrame, n: int = 2) -> str:
    """The first ``n`` samples of the last model's non-private and most private runs (notebook 04)."""
    model = [m for m in runs["model"] if not is_matched(m)][-1]
    parts = []
    for eps in (math.inf, min(runs["target_epsilon"])):
        run = next(r for r in runs_of(runs) if r.model == model and r.target_epsilon == eps)
        parts.append(f"--- {run.model}, target ε = {eps}")
        parts += [f"{text} \n" for text in run_samples(synthetic, run)[:n]]
    return "\n".join(parts)
