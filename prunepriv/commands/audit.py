"""``prunepriv audit``: every memorization attack of notebook 05 on one adapter, each figure beside its control."""
from __future__ import annotations

import copy
import math
from pathlib import Path

from prunepriv.commands.canaries import load_canaries
from prunepriv.compress.pruning import remove_layers
from prunepriv.config import Profile
from prunepriv.data import SPLITS, Corpus, corpus_for, load_records
from prunepriv.errors import DataError, PrunePrivError
from prunepriv.lm.generation import SamplingSpec, sample_records
from prunepriv.lm.lora import check_adapter_dir, load_adapter
from prunepriv.lm.models import (
    check_tokenizer,
    load_model,
    load_tokenizer,
    model_num_layers,
)
from prunepriv.privacy.record import FinetuneRun
from prunepriv.results import (
    atomic_write_json,
    check_writable,
    json_safe,
    provenance,
    read_json,
)
from prunepriv.stages.memorization import (
    References,
    attack_run,
    load_samples,
    report_rows,
    skipped_measurements,
)


def audit_corpus(profile: Profile, train: str | None, heldout: str | None, text_field: str,
                 canaries: str | None = None) -> Corpus:
    """The profile's corpus, or the user's training records with their held-out control and,
    from ``canaries`` (written by ``prunepriv canaries``), the canaries inserted into them."""
    if bool(train) != bool(heldout):
        raise PrunePrivError("--train and --heldout go together: the held-out records are the control")
    if canaries and not train:
        raise PrunePrivError("--canaries goes with --train and --heldout (the file the canaries were inserted into)")
    if not train:
        corpus = corpus_for(profile)
    else:
        splits = {s: [] for s in SPLITS}
        splits["train"] = load_records(train, text_field)
        splits["heldout"] = load_records(heldout, text_field)
        corpus = Corpus(splits, load_canaries(canaries) if canaries else [], source="user")
        mark_canary_records(corpus)
    if not corpus.texts("train") or not corpus.texts("heldout"):
        raise DataError("the audit needs training and held-out records; one of them is empty")
    return corpus


def mark_canary_records(corpus: Corpus) -> None:
    """Training records whose text is a canary's are canary records (left out of the note attacks)."""
    by_text = {c.text: c.id for c in corpus.canaries}
    for record in corpus.splits["train"]:
        if record.text in by_text:
            record.kind, record.canary = "canary", by_text[record.text]
    inserted = {r.canary for r in corpus.splits["train"] if r.canary}
    missing = [c.id for c in corpus.canaries if c.repetitions > 0 and c.id not in inserted]
    if missing:
        raise DataError(f"the --canaries file lists trained canaries ({', '.join(missing[:3])}, ...) that the "
                        "--train file does not hold: pass the file that `prunepriv canaries` wrote")


def privacy_file(adapter: Path) -> Path | None:
    """The run's ``privacy.json``: inside the adapter folder, else beside it."""
    return next((p for p in (adapter / "privacy.json", adapter.parent / "privacy.json") if p.is_file()), None)


def audited_run(adapter: Path, n_train: int) -> FinetuneRun:
    """The run as the attacks see it, with its privacy record if it left one (else ε is unknown: NaN)."""
    path = privacy_file(adapter)
    record = read_json(path, "it should be the privacy.json that prunepriv finetune wrote") if path else {}
    target = record.get("target_epsilon", math.inf if record.get("private") is False else
                        record.get("epsilon_rdp", math.nan))
    return FinetuneRun.from_privacy(model="model", run_dir=str(adapter.parent), record=record,
                                    target_epsilon=target, default_delta=1 / (10 * max(n_train, 1)))


def load_tuned(profile: Profile, adapter: Path, layers: list[int] | None, tokenizer_dir: str | None):
    """The untuned base (with ``layers`` removed) and the base with the adapter, and their tokenizer."""
    model_num_layers(profile.model)
    base, tokenizer = load_model(profile.model, device=profile.device, precision=profile.precision)
    if tokenizer_dir:
        tokenizer = load_tokenizer(tokenizer_dir)
    check_tokenizer(base, tokenizer)
    if layers:
        remove_layers(base, layers)
    return base.eval(), load_adapter(copy.deepcopy(base), adapter).eval(), tokenizer


def audit(profile: Profile, adapter: Path, layers: list[int] | None = None, tokenizer: str | None = None,
          train: str | None = None, heldout: str | None = None, text_field: str = "text",
          samples: str | None = None, output: str | None = None,
          canaries: str | None = None) -> tuple[Path, list, list]:
    """Attack the adapter; writes ``report.json`` (default ``ADAPTER/../audit/``) and returns its path,
    the measured rows and the skipped measurements with their reasons."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()                       # stderr carries only the error line
    check_adapter_dir(adapter)
    path = check_writable(Path(output) if output else adapter.parent / "audit") / "report.json"
    cfg = profile.memorization
    corpus = audit_corpus(profile, train, heldout, text_field, canaries)
    texts = load_samples(samples) if samples else None
    base, tuned, tok = load_tuned(profile, adapter, layers, tokenizer)
    if texts is None:
        texts = sample_records(tuned, tok, SamplingSpec.from_config(cfg), profile.seed)
    if not any(s.strip() for s in texts):
        raise DataError("the model generated no text to audit (every sample is empty)")
    refs = References({"model": base}, tok, cfg.max_length, cfg.batch_size)
    result = attack_run(tuned, audited_run(adapter, len(corpus.texts("train"))), corpus, tok, refs, texts, cfg,
                        profile.seed)
    result["provenance"] = provenance(profile)
    result["skipped"] = [{"measurement": name, "why": why} for name, why in skipped_measurements(result)]
    atomic_write_json(path, json_safe(result))
    return path, report_rows(result), skipped_measurements(result)
