"""Run the numbered notebooks of a profile with papermill, skipping what has not changed.

A stage is skipped when its *fingerprint* matches the one saved after its last
successful run and its recorded outputs are still there, unchanged. The
fingerprint covers what the stage can depend on (the showyourwork / make
idea applied to notebooks):

* the notebook's cells;
* the source of every ``prunepriv`` module the notebook imports, followed
  through the package's own imports (so editing ``cli.py`` reruns nothing,
  editing ``finetune.py`` reruns the stages that use it);
* the versions of the scientific packages (:data:`prunepriv.results.PACKAGES`);
* the profile sections the stage reads and the sha256 of the upstream files
  it reads, both as the stage declares them in
  :data:`prunepriv.pipeline.registry.REGISTRY`.

Outputs are staged: the notebook writes into a temporary folder and only a
finished notebook's files are moved into ``results/NAME/`` and
``figures/NAME/``, together with the manifest, the executed notebook and
``stages.json`` (:mod:`prunepriv.pipeline.commit`); a failing stage leaves the
previous good outputs in place and its executed copy in ``results/NAME/.failed/``.
The notebook runs in a child process (:mod:`prunepriv.pipeline.execute`), so
Ctrl-C stops it within seconds and commits nothing.
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from prunepriv.compress.pruning import check_count
from prunepriv.config import load_profile
from prunepriv.data import corpus_for
from prunepriv.errors import PrunePrivError, ResultsError, StageError, user_error_names
from prunepriv.lm.models import model_num_layers, resolve_device
from prunepriv.pipeline.commit import clean_leftovers, commit, profile_lock, recover
from prunepriv.pipeline.execute import NotebookFailure, execute
from prunepriv.pipeline.registry import REGISTRY, Registry
from prunepriv.privacy.specs import check_privacy, finetune_specs
from prunepriv.results import (
    STAGE_DIR_ENV,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    load_manifest,
    merge_manifest,
    package_versions,
    read_json,
    sha256_file,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = PACKAGE_DIR.parent / "notebooks"
STATE_FILE = "stages.json"


@dataclass
class StageResult:
    stage: str
    notebook: Path
    seconds: float
    skipped: bool = False


def select_stages(stages: list[str] | None, registry: Registry = REGISTRY) -> list[str]:
    """Stage keys in order; accepts ``01`` or ``1`` or a notebook stem."""
    keys = [s.key for s in registry.stages]
    if not stages:
        return keys
    chosen = {registry.stage(k).key for item in stages
              for k in [next((key for key in keys if item == key.lstrip("0")), item)]}
    return sorted(chosen)


def preflight(profile) -> None:
    """Checks that need only the model config, so bad input fails before any run."""
    resolve_device(profile.device)
    num_layers = model_num_layers(profile.model)
    for k in set(profile.pruning.remove) | set(profile.latency.remove) | {profile.pruning.paper_remove}:
        check_count(k, num_layers)

    n_train = len(corpus_for(profile).texts("train"))          # also checks a user's data file
    if n_train < profile.finetune.batch_size:
        raise PrunePrivError(f"training split has {n_train} records, fewer than one batch "
                             f"(finetune.batch_size = {profile.finetune.batch_size})")
    for spec in finetune_specs(profile)[1].values():
        check_privacy(spec, n_train)


# --------------------------------------------------------------------------
# fingerprints

def notebook_code(path: Path) -> list[str]:
    """Sources of a notebook's code cells."""
    cells = json.loads(Path(path).read_text())["cells"]
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in cells if c["cell_type"] == "code"]


def module_file(name: str) -> Path | None:
    """The source file of ``prunepriv.a.b`` (a module or a subpackage's ``__init__``), if it exists."""
    parts = name.split(".")
    if parts[0] != "prunepriv":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    return next((c for c in (base / "__init__.py", base.with_suffix(".py")) if c.is_file()), None)


def _absolute(node: ast.ImportFrom, module: str | None) -> str | None:
    """The absolute name an ``ImportFrom`` refers to; relative ones resolved against ``module``
    (a package's own name ends in ``.__init__``)."""
    if not node.level:
        return node.module
    if module is None:
        return None
    package = module.split(".")[: -node.level]
    return ".".join(package + ([node.module] if node.module else []))


def _imported_modules(source: str, module: str | None = None) -> set[str]:
    """``prunepriv`` modules (dotted names) that ``source`` imports; ``module`` is its own name."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    found: set[str] = set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            if not base:
                continue
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):       # a.b.c imports a and a.b too
                if module_file(".".join(parts[:i])) is not None:
                    found.add(".".join(parts[:i]))
    return found


def _module_key(name: str) -> str:
    """``prunepriv.privacy.train`` → ``privacy/train.py`` (the fingerprint's key)."""
    return module_file(name).relative_to(PACKAGE_DIR).as_posix()


def code_dependencies(sources: list[str]) -> list[str]:
    """Every ``prunepriv`` source file the code imports, directly or through the package
    (paths relative to the package, e.g. ``privacy/train.py``)."""
    pending = set().union(*(_imported_modules(s) for s in sources)) if sources else set()
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        own = name + ".__init__" if module_file(name).name == "__init__.py" else name
        pending |= _imported_modules(module_file(name).read_text(), own) - seen
    return sorted(_module_key(m) for m in seen)


def stage_fingerprint(key: str, profile, results_dir: Path, registry: Registry = REGISTRY) -> dict:
    """Everything stage ``key`` depends on, with one sha256 over all of it."""
    stage = registry.stage(key)
    source = NOTEBOOKS_DIR / stage.notebook
    code = notebook_code(source)
    settings = profile.to_dict()
    parts = {
        "notebook": hashlib.sha256(json.dumps(code).encode()).hexdigest(),
        "code": {m: sha256_file(PACKAGE_DIR / m) for m in code_dependencies(code)},
        "packages": {k: v for k, v in package_versions().items() if k != "prunepriv"},
        "profile": {section: settings[section] for section in stage.sections},
        "inputs": {name: sha256_file(results_dir / name) if (results_dir / name).is_file() else None
                   for name in registry.input_files(key)},
    }
    parts["sha256"] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return parts


def load_state(results_dir: Path) -> dict:
    path = results_dir / STATE_FILE
    state = read_json(path, "delete it to rerun every stage") if path.is_file() else {}
    if not isinstance(state, dict):
        raise ResultsError(f"{path} is not a prunepriv stage record; delete it to rerun every stage")
    return state


def why_stale(key: str, fingerprint: dict, state: dict, root: Path) -> str | None:
    """``None`` if stage ``key`` is up to date, else the first reason it is not."""
    saved = state.get(key)
    if saved is None:
        return "never run"
    if saved["fingerprint"]["sha256"] != fingerprint["sha256"]:
        old = saved["fingerprint"]
        changed = [part for part in ("notebook", "code", "packages", "profile", "inputs")
                   if old.get(part) != fingerprint[part]]
        if "code" in changed:
            modules = sorted(m for m in set(old["code"]) | set(fingerprint["code"])
                             if old["code"].get(m) != fingerprint["code"].get(m))
            return "code changed: " + ", ".join(f"prunepriv/{m}" for m in modules)
        if "inputs" in changed:
            files = [f for f in fingerprint["inputs"] if old["inputs"].get(f) != fingerprint["inputs"][f]]
            return "upstream output changed: " + ", ".join(files)
        return f"{' and '.join(changed)} changed"
    for rel, digest in saved["outputs"].items():
        path = root / rel
        if not path.is_file():
            return f"output {rel} is missing"
        if sha256_file(path) != digest:
            return f"output {rel} was modified"
    return None


# --------------------------------------------------------------------------
# the batch

def reproduce(profile_name: str, stages: list[str] | None = None, output_root: str | Path = ".",
              progress: bool = True, force: bool = False, log=print,
              registry: Registry = REGISTRY) -> list[StageResult]:
    """Execute the profile's notebooks in order; returns one result per stage.

    Stages whose fingerprint is unchanged are skipped unless ``force`` is set
    or they are named in ``stages``. ``log`` receives one line per decision.
    Bad input, an unwritable output root and damaged state files fail before
    anything runs; one run per profile holds its lock; leftovers of an
    interrupted run are finished (a half-made commit) or removed first.
    """
    profile = load_profile(profile_name)
    keys = select_stages(stages, registry)
    root = check_writable(Path(output_root).resolve())
    results_dir = root / "results" / profile.name
    load_state(results_dir), load_manifest(results_dir / "manifest.json")   # damaged state fails before any run
    preflight(profile)
    with profile_lock(results_dir, profile.name):
        if recover(results_dir):
            log("finished the commit of a stage that an interrupted run had begun")
        clean_leftovers(results_dir)
        return _run_stages(profile, keys, root, results_dir, force or bool(stages), progress, log, registry)


def _run_stages(profile, keys: list[str], root: Path, results_dir: Path, forced: bool, progress: bool, log,
                registry: Registry) -> list[StageResult]:
    results = []
    bar = tqdm(keys, desc=f"reproduce[{profile.name}]", unit="stage", disable=not progress)
    for key in bar:
        source = NOTEBOOKS_DIR / registry.stage(key).notebook
        if not source.is_file():
            raise PrunePrivError(f"notebook {source} is missing (run from a checkout of the repository)")
        bar.set_description(f"reproduce[{profile.name}] {source.stem}")
        fingerprint = stage_fingerprint(key, profile, results_dir, registry)
        state = load_state(results_dir)
        reason = "forced" if forced else why_stale(key, fingerprint, state, root)
        executed = results_dir / "notebooks" / source.name
        if reason is None:
            log(f"{key} {source.stem}: unchanged since {state[key]['finished']}, skipped (--force reruns it)")
            results.append(StageResult(key, executed, 0.0, skipped=True))
            continue
        log(f"{key} {source.stem}: running ({reason})")
        seconds = _run_stage(key, source, profile, root, results_dir, fingerprint, progress)
        results.append(StageResult(key, executed, seconds))
    return results


def _notebook_parameters(profile, root: Path) -> dict:
    """Paths relative to the output root where possible, so executed notebooks carry no home folders."""
    source = Path(profile.source).resolve()
    try:
        profile_arg = source.relative_to(root).as_posix()
    except ValueError:
        profile_arg = str(source)
    return {"profile": profile_arg, "output_root": "."}


def _run_stage(key: str, source: Path, profile, root: Path, results_dir: Path, fingerprint: dict,
               progress: bool) -> float:
    """Execute one notebook into a staging folder; commit its outputs, executed copy and state together."""
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-stage-{source.stem}-", dir=results_dir))
    try:
        executed = staging / "executed" / source.name
        executed.parent.mkdir()
        start = time.perf_counter()
        try:
            execute(source, executed, _notebook_parameters(profile, root), root,
                    {STAGE_DIR_ENV: str(staging / "tree")}, progress)
        except NotebookFailure as exc:
            kept = _keep_failed(executed, results_dir)
            raise StageError(_describe_failure(source, kept, exc), exc.ename in user_error_names()) from None
        seconds = time.perf_counter() - start
        commit(results_dir, _staged_moves(key, source, staging, root, results_dir, fingerprint, seconds))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return seconds


def _keep_failed(executed: Path, results_dir: Path) -> Path:
    """Keep a failed notebook's executed copy in ``results/NAME/.failed/`` for the user to read."""
    kept = results_dir / ".failed" / executed.name
    if executed.is_file():
        kept.parent.mkdir(exist_ok=True)
        os.replace(executed, kept)
    return kept


def _staged_moves(key: str, source: Path, staging: Path, root: Path, results_dir: Path, fingerprint: dict,
                  seconds: float) -> list[tuple[Path, Path]]:
    """Stage the merged manifest, the executed notebook and HTML, and ``stages.json``; every move to make."""
    tree, meta = staging / "tree", staging / "meta"
    moves, merged = [], load_manifest(results_dir / "manifest.json")
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree)
        if rel.name != "manifest.json":
            moves.append((path, root / rel))
            continue
        manifest = merge_manifest(load_manifest(root / rel), load_manifest(path), source.stem)
        atomic_write_json(meta / rel, manifest)
        moves.append((meta / rel, root / rel))
        if root / rel == results_dir / "manifest.json":
            merged = manifest
    executed, html = staging / "executed" / source.name, staging / "executed" / f"{source.stem}.html"
    _write_html(executed, html)
    notebooks = results_dir / "notebooks"
    moves += [(executed, notebooks / source.name), (html, notebooks / html.name)]
    outputs = {f["path"]: f["sha256"] for entry in merged["artifacts"].values()
               if entry.get("notebook") == source.stem for f in entry["files"]}
    outputs[Path(os.path.relpath(notebooks / source.name, root)).as_posix()] = sha256_file(executed)
    state = load_state(results_dir)
    state[key] = {"fingerprint": fingerprint, "outputs": outputs, "seconds": round(seconds, 1),
                  "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(meta / STATE_FILE, state)
    return moves + [(meta / STATE_FILE, results_dir / STATE_FILE)]


def _write_html(executed: Path, target: Path) -> None:
    """An HTML rendering of an executed notebook, for reviewers without Jupyter."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    level = exporter.log.level
    exporter.log.setLevel(logging.ERROR)     # "Alternative text is missing on N image(s)": inline matplotlib figures
    try:
        body, _ = exporter.from_notebook_node(nbformat.read(str(executed), as_version=4))
    finally:
        exporter.log.setLevel(level)
    atomic_write_text(target, body)


def _describe_failure(source: Path, executed: Path, exc: NotebookFailure) -> str:
    """Name the failing cell as the committed notebook numbers it (papermill's injected cell not counted)."""
    message = str(exc.evalue).strip().splitlines()
    detail = message[0] if message else exc.ename
    index, first_line = exc.cell_index, ""
    try:
        cells = [c for c in json.loads(executed.read_text())["cells"]          # papermill's error banner dropped
                 if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
        injected = sum("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells[:exc.cell_index])
        index -= injected
        source_text = cells[exc.cell_index]["source"]
        source_text = "".join(source_text) if isinstance(source_text, list) else source_text
        first_line = next((ln.strip() for ln in source_text.splitlines() if ln.strip()), "")
    except (OSError, ValueError, IndexError, KeyError):
        pass
    where = f"cell {index}" + (f" [{first_line[:60]}]" if first_line else "")
    return (f"{source.name} failed in {where}: {exc.ename}: {detail} "
            f"(executed notebook kept at {executed})")
