"""All-or-nothing stage commits, leftovers of interrupted runs, and one run per profile at a time.

A finished stage's files (its outputs, the merged manifest, its executed
notebook and HTML, the updated ``stages.json``) are all staged first; then a
journal listing every move is written atomically, the moves are made, and the
journal is removed. A run killed part-way (even ``kill -9``) leaves the
journal behind, and the next run completes the moves before anything else
(:func:`recover`): a stage is either wholly in place or not at all.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from prunepriv.errors import LockedError
from prunepriv.results import atomic_write_json, read_json

JOURNAL = ".commit.json"
LOCK = ".lock"
LEFTOVER_PATTERNS = (".tmp-stage-*", ".tmp-failure-*")


def commit(results_dir: Path, moves: list[tuple[Path, Path]]) -> None:
    """Move every staged file onto its final path, as one step that a crash cannot leave half done."""
    atomic_write_json(results_dir / JOURNAL, {"moves": [[str(src), str(dst)] for src, dst in moves]})
    recover(results_dir)


def recover(results_dir: Path) -> bool:
    """Finish a commit that an interrupted run left in its journal; true if there was one."""
    journal = results_dir / JOURNAL
    if not journal.is_file():
        return False
    for src, dst in read_json(journal, "delete it if no stage was being committed")["moves"]:
        src, dst = Path(src), Path(dst)
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    journal.unlink()
    return True


def clean_leftovers(results_dir: Path) -> list[Path]:
    """Remove staging folders and failure notes that interrupted runs left; returns what was removed."""
    removed = []
    for pattern in LEFTOVER_PATTERNS:
        for path in results_dir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def profile_lock(results_dir: Path, profile_name: str) -> Iterator[None]:
    """Hold ``results/NAME/.lock`` while a run of the profile is going; a second run is refused.

    The lock is an ``flock`` on an open file, so the operating system releases
    it when the holder ends, however it ends.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise LockedError(f"profile {profile_name} is already being run by {holder} (lock file {path}); "
                          "wait for it to finish or stop it") from None
    try:
        handle.seek(0)
        handle.truncate()
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
