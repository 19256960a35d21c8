"""Run the numbered notebooks of a profile with papermill.

Executed notebooks go to ``results/NAME/notebooks/`` only when they finish;
a failing stage leaves its executed copy in a temporary folder (named in the
error) and the previous good outputs in place.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .config import load_profile
from .experiments import finetune_specs
from .errors import PrunePrivError

USER_ERROR_NAMES = {"PrunePrivError", "ConfigError", "DataError", "ModelError", "PruningError", "FileNotFoundError",
                    "PrivacyConfigError", "AuditError"}
from .models import model_num_layers
from .pruning import check_count

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
STAGES = {
    "01": "01_layer_similarity.ipynb",
    "02": "02_layer_pruning.ipynb",
    "03": "03_private_finetuning.ipynb",
    "04": "04_synthetic_data.ipynb",
    "05": "05_memorization.ipynb",
}


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


def reproduce(profile_name: str, stages: list[str] | None = None, output_root: str | Path = ".",
              progress: bool = True) -> list[StageResult]:
    """Execute the profile's notebooks in order; returns one result per stage."""
    import time

    import papermill as pm

    profile = load_profile(profile_name)
    preflight(profile)
    keys = select_stages(stages)
    root = Path(output_root).resolve()
    out_dir = root / "results" / profile.name / "notebooks"
    results = []
    bar = tqdm(keys, desc=f"reproduce[{profile.name}]", unit="stage", disable=not progress)
    for key in bar:
        source = NOTEBOOKS_DIR / STAGES[key]
        if not source.is_file():
            raise PrunePrivError(f"notebook {source} is missing (run from a checkout of the repository)")
        bar.set_description(f"reproduce[{profile.name}] {source.stem}")
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"prunepriv-{profile.name}-{key}-"))
        tmp_nb = tmp_dir / source.name
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(source), str(tmp_nb),
                parameters={"profile": profile.source, "output_root": str(root)},
                cwd=str(root), kernel_name="python3", progress_bar=progress, log_output=False,
            )
        except pm.PapermillExecutionError as exc:
            raise StageError(_describe_failure(source, tmp_nb, exc), exc.ename in USER_ERROR_NAMES) from None
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / source.name
        shutil.move(tmp_nb, final)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        results.append(StageResult(key, final, time.perf_counter() - start))
    return results


def _describe_failure(source: Path, executed: Path, exc) -> str:
    message = str(exc.evalue).strip().splitlines()
    detail = message[0] if message else exc.ename
    return (f"{source.name} failed in cell {exc.cell_index}: {exc.ename}: {detail} "
            f"(executed notebook kept at {executed})")
