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
* the profile sections the stage reads (:data:`STAGE_SECTIONS`);
* the sha256 of the upstream files it reads (:data:`STAGE_INPUTS`).

Outputs are staged: the notebook writes into a temporary folder and only a
finished notebook's files are moved into ``results/NAME/`` and
``figures/NAME/``; a failing stage leaves the previous good outputs in place
and its executed copy in a temporary folder named in the error.
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .claims import TABLES as CLAIM_TABLES
from .config import load_profile
from .errors import PrunePrivError
from .experiments import finetune_specs
from .models import model_num_layers
from .pruning import check_count
from .results import STAGE_DIR_ENV, atomic_write_json, commit_staged, load_manifest, package_versions, sha256_file

USER_ERROR_NAMES = {"PrunePrivError", "ConfigError", "DataError", "ModelError", "PruningError", "FileNotFoundError",
                    "PrivacyConfigError", "AuditError"}

PACKAGE_DIR = Path(__file__).resolve().parent
NOTEBOOKS_DIR = PACKAGE_DIR.parent / "notebooks"
STAGES = {
    "01": "01_layer_similarity.ipynb",
    "02": "02_layer_pruning.ipynb",
    "03": "03_private_finetuning.ipynb",
    "04": "04_synthetic_data.ipynb",
    "05": "05_memorization.ipynb",
    "06": "06_baselines.ipynb",
    "07": "07_paper.ipynb",
}
_BASE = ("seed", "device", "model", "data")
STAGE_SECTIONS = {
    "01": _BASE + ("similarity",),
    "02": _BASE + ("pruning", "latency"),
    "03": _BASE + ("finetune",),
    "04": _BASE + ("memorization",),
    "05": _BASE + ("memorization",),
    "06": _BASE + ("similarity", "pruning", "latency", "finetune", "memorization", "baselines"),
    "07": (),
}
# Files under results/NAME/ that a stage reads from earlier stages.
STAGE_INPUTS = {
    "01": (),
    "02": ("layer_similarity.json",),
    "03": ("pruned_layers.json",),
    "04": ("pruned_layers.json", "finetune.csv"),
    "05": ("pruned_layers.json", "finetune.csv", "synthetic.csv"),
    "06": ("layer_similarity.json", "finetune.csv"),
    "07": CLAIM_TABLES,
}
STATE_FILE = "stages.json"


class StageError(PrunePrivError):
    """A notebook failed; the message names the notebook and the cell.

    ``user_error`` is true when the notebook raised one of prunepriv's
    bad-input errors (exit status 2), false for any other failure.
    """

    def __init__(self, message: str, user_error: bool) -> None:
        super().__init__(message)
        self.user_error = user_error


@dataclass
class StageResult:
    stage: str
    notebook: Path
    seconds: float
    skipped: bool = False


def select_stages(stages: list[str] | None) -> list[str]:
    """Stage keys in order; accepts ``01`` or ``1`` or a notebook stem."""
    if not stages:
        return list(STAGES)
    chosen = []
    for item in stages:
        key = next((k for k, nb in STAGES.items() if item in (k, k.lstrip("0"), Path(nb).stem)), None)
        if key is None:
            raise PrunePrivError(f"unknown stage {item!r}; stages: {', '.join(STAGES)}")
        chosen.append(key)
    return sorted(set(chosen))


def preflight(profile) -> None:
    """Checks that need only the model config, so bad input fails before any run."""
    num_layers = model_num_layers(profile.model)
    for k in set(profile.pruning.remove) | set(profile.latency.remove) | {profile.pruning.paper_remove}:
        check_count(k, num_layers)
    from .data import corpus_for
    from .finetune import check_privacy

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


def _imported_modules(source: str, package_relative: bool) -> set[str]:
    """``prunepriv`` modules that ``source`` imports (names without the package prefix)."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and package_relative:
                base = node.module or ""
            elif node.module and (node.module == "prunepriv" or node.module.startswith("prunepriv.")):
                base = node.module.removeprefix("prunepriv").lstrip(".")
            else:
                continue
            names = [f"prunepriv.{base}" if base else "prunepriv"]
            names += [f"prunepriv.{base + '.' if base else ''}{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "prunepriv":
                found.add("__init__")
            elif name.startswith("prunepriv."):
                module = name.split(".")[1]
                if (PACKAGE_DIR / f"{module}.py").is_file():
                    found.add(module)
    return found


def code_dependencies(sources: list[str]) -> list[str]:
    """Every ``prunepriv`` module the code imports, directly or through the package."""
    pending = set().union(*(_imported_modules(s, False) for s in sources)) if sources else set()
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        pending |= _imported_modules((PACKAGE_DIR / f"{module}.py").read_text(), True) - seen
    return sorted(seen)


def stage_fingerprint(key: str, profile, results_dir: Path) -> dict:
    """Everything stage ``key`` depends on, with one sha256 over all of it."""
    source = NOTEBOOKS_DIR / STAGES[key]
    code = notebook_code(source)
    settings = profile.to_dict()
    parts = {
        "notebook": hashlib.sha256(json.dumps(code).encode()).hexdigest(),
        "code": {m: sha256_file(PACKAGE_DIR / f"{m}.py") for m in code_dependencies(code)},
        "packages": {k: v for k, v in package_versions().items() if k != "prunepriv"},
        "profile": {section: settings[section] for section in STAGE_SECTIONS[key]},
        "inputs": {name: sha256_file(results_dir / name) if (results_dir / name).is_file() else None
                   for name in STAGE_INPUTS[key]},
    }
    parts["sha256"] = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return parts


def load_state(results_dir: Path) -> dict:
    path = results_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _outputs(root: Path, results_dir: Path, notebook_stem: str) -> dict[str, str]:
    """Files the manifest lists for a notebook, plus its executed copy, with their sha256."""
    manifest = load_manifest(results_dir / "manifest.json")
    files = {f["path"]: f["sha256"] for entry in manifest["artifacts"].values()
             if entry.get("notebook") == notebook_stem for f in entry["files"]}
    executed = results_dir / "notebooks" / f"{notebook_stem}.ipynb"
    if executed.is_file():
        files[Path(os.path.relpath(executed, root)).as_posix()] = sha256_file(executed)
    return files


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
            return "code changed: " + ", ".join(f"prunepriv/{m}.py" for m in modules)
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
              progress: bool = True, force: bool = False, log=print) -> list[StageResult]:
    """Execute the profile's notebooks in order; returns one result per stage.

    Stages whose fingerprint is unchanged are skipped unless ``force`` is set
    or they are named in ``stages``. ``log`` receives one line per decision.
    """
    profile = load_profile(profile_name)
    preflight(profile)
    keys = select_stages(stages)
    forced = force or bool(stages)
    root = Path(output_root).resolve()
    results_dir = root / "results" / profile.name
    results = []
    bar = tqdm(keys, desc=f"reproduce[{profile.name}]", unit="stage", disable=not progress)
    for key in bar:
        source = NOTEBOOKS_DIR / STAGES[key]
        if not source.is_file():
            raise PrunePrivError(f"notebook {source} is missing (run from a checkout of the repository)")
        bar.set_description(f"reproduce[{profile.name}] {source.stem}")
        fingerprint = stage_fingerprint(key, profile, results_dir)
        state = load_state(results_dir)
        reason = "forced" if forced else why_stale(key, fingerprint, state, root)
        executed = results_dir / "notebooks" / source.name
        if reason is None:
            log(f"{key} {source.stem}: unchanged since {state[key]['finished']}, skipped (--force reruns it)")
            results.append(StageResult(key, executed, 0.0, skipped=True))
            continue
        log(f"{key} {source.stem}: running ({reason})")
        seconds = _run_stage(source, profile, root, results_dir, progress)
        _save_state(results_dir, key, fingerprint, seconds, _outputs(root, results_dir, source.stem))
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


def _run_stage(source: Path, profile, root: Path, results_dir: Path, progress: bool) -> float:
    """Execute one notebook into a staging folder; move its outputs into place when it finishes."""
    import papermill as pm

    results_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-stage-{source.stem}-", dir=results_dir))
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"prunepriv-{profile.name}-{source.stem}-"))
    tmp_nb = tmp_dir / source.name
    start = time.perf_counter()
    previous = os.environ.get(STAGE_DIR_ENV)
    os.environ[STAGE_DIR_ENV] = str(staging)
    try:
        pm.execute_notebook(str(source), str(tmp_nb), parameters=_notebook_parameters(profile, root),
                            cwd=str(root), kernel_name="python3", progress_bar=progress, log_output=False)
    except pm.PapermillExecutionError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise StageError(_describe_failure(source, tmp_nb, exc), exc.ename in USER_ERROR_NAMES) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if previous is None:
            os.environ.pop(STAGE_DIR_ENV, None)
        else:
            os.environ[STAGE_DIR_ENV] = previous
    commit_staged(staging, root, source.stem)
    shutil.rmtree(staging, ignore_errors=True)
    out_dir = results_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_html(tmp_nb, out_dir / f"{source.stem}.html")
    shutil.move(tmp_nb, out_dir / source.name)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return time.perf_counter() - start


def _write_html(executed: Path, target: Path) -> None:
    """An HTML rendering of an executed notebook, for reviewers without Jupyter."""
    import nbformat
    from nbconvert import HTMLExporter

    from .results import atomic_write_text

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(executed), as_version=4))
    atomic_write_text(target, body)


def _save_state(results_dir: Path, key: str, fingerprint: dict, seconds: float, outputs: dict) -> None:
    state = load_state(results_dir)
    state[key] = {"fingerprint": fingerprint, "outputs": outputs, "seconds": round(seconds, 1),
                  "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(results_dir / STATE_FILE, state)


def _describe_failure(source: Path, executed: Path, exc) -> str:
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
