"""``prunepriv canaries``: insert Secret-Sharer canaries into a user's corpus before fine-tuning,
so that ``prunepriv audit --canaries`` can measure exposure and run the one-run audit on user data.

Canaries follow Carlini et al. (2019): a fixed sentence with a random
6-digit secret, each trained canary inserted ``r`` times, and held-out
canaries of the same format that are never inserted (the control). Audit
canaries (Steinke, Nasr & Jagielski 2023) are inserted once each with
probability 1/2. The output is JSONL (every user text unchanged, canaries
shuffled in); the secrets go to a separate ``*.canaries.json`` that must not
be trained on.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from prunepriv.config import DataConfig
from prunepriv.data import (
    AUDIT_FORMAT,
    CANARY_FORMAT,
    Canary,
    insert_canaries,
    load_records,
    make_canaries,
    seeded_generators,
)
from prunepriv.errors import DataError
from prunepriv.results import atomic_write_json, atomic_write_text, check_writable



@dataclass
class CanaryFile:
    """What ``canaries`` wrote."""

    data: Path
    canaries: Path
    n_records: int
    n_canary_records: int


def canaries_path(data: Path) -> Path:
    """``notes+canaries.jsonl`` → ``notes+canaries.canaries.json``."""
    return data.with_name(data.stem + ".canaries.json")


def add_canaries(data: str | Path, output: str | Path, config: DataConfig, text_field: str = "text",
                 seed: int | None = None) -> CanaryFile:
    """Write the user's records with canaries shuffled in (JSONL, ``text_field``) and their secrets."""
    output = Path(output)
    if output.suffix.lower() != ".jsonl":
        raise DataError(f"--output must be a .jsonl file (texts are written one JSON object per line), got {output}")
    check_writable(output.parent)
    if output.exists() or canaries_path(output).exists():
        raise DataError(f"{output} or {canaries_path(output)} exists; choose another --output")
    records = load_records(data, text_field)
    seed = secrets.randbits(63) if seed is None else seed        # secrets nobody can regenerate from a public seed
    rng, fake = seeded_generators(seed)
    canaries = make_canaries(rng, fake, config.n_canaries, config.canary_repetitions, config.n_heldout_canaries,
                             config.n_audit_canaries, seed)
    mixed = insert_canaries(records, canaries, rng)
    body = "".join(json.dumps({text_field: r.text}, ensure_ascii=False) + "\n" for r in mixed)
    atomic_write_json(canaries_path(output), {
        "format": CANARY_FORMAT, "audit_format": AUDIT_FORMAT, "seed": seed, "source": str(data), "data": output.name,
        "data_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        "canaries": [asdict(c) for c in canaries]})
    atomic_write_text(output, body)
    return CanaryFile(output, canaries_path(output), len(mixed), len(mixed) - len(records))


def load_canaries(path: str | Path) -> list[Canary]:
    """The canaries of a ``*.canaries.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"canary file not found: {path}")
    try:
        return [Canary(**c) for c in json.loads(path.read_text(encoding="utf-8"))["canaries"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a prunepriv canary file ({type(exc).__name__}: {exc})") from None
