"""The pipeline declared once: every stage, and every artifact a stage writes.

A stage is one numbered notebook. It declares the profile sections it reads
and the upstream artifacts it reads; what it writes is every artifact whose
``stage`` is its key. ``prunepriv reproduce`` (fingerprints), the claims,
``prunepriv verify`` and :class:`prunepriv.results.Run` (``run.load(id)``,
``run.save_table(id, frame)``) all derive their file names and the stage
graph from here — the dependency graph stated once, as showyourwork does.

Artifact kinds and where their files live (``NAME`` is the profile's name):

* ``table`` — ``results/NAME/<path>`` (CSV), read back as a DataFrame;
* ``json`` — ``results/NAME/<path>``, read back as a dict;
* ``figure`` — ``figures/NAME/<path>.{png,pdf}``;
* ``folder`` — ``results/NAME/<path>/``: per-run caches (adapters, samples),
  not hashed into fingerprints (the stage's table that lists them is);
* ``tex`` — ``<paper folder>/<path>`` (see :func:`prunepriv.report.paper.output_dir`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from prunepriv.errors import PrunePrivError

RESULT_KINDS = ("table", "json")


@dataclass(frozen=True)
class Artifact:
    """One output of one stage."""

    id: str          # e.g. "tab:finetuning"
    path: str        # file (or stem, or folder) relative to where its kind lives
    stage: str       # the key of the stage that writes it
    kind: str = "table"

    def __post_init__(self) -> None:
        if self.kind not in ("table", "json", "figure", "folder", "tex"):
            raise ValueError(f"unknown artifact kind {self.kind!r}")


@dataclass(frozen=True)
class Stage:
    """One notebook of the pipeline."""

    key: str                          # "03"
    notebook: str                     # "03_private_finetuning.ipynb"
    sections: tuple[str, ...]         # profile sections it reads
    reads: tuple[str, ...] = ()       # artifact ids of earlier stages

    @property
    def stem(self) -> str:
        return self.notebook.removesuffix(".ipynb")


@dataclass(frozen=True)
class Registry:
    """Stages in order and the artifacts they write."""

    stages: tuple[Stage, ...]
    artifacts: tuple[Artifact, ...] = field(default=())

    def __post_init__(self) -> None:
        ids = [a.id for a in self.artifacts]
        if len(set(ids)) != len(ids):
            raise ValueError("artifact ids must be unique")
        keys = [s.key for s in self.stages]
        for artifact in self.artifacts:
            if artifact.stage not in keys:
                raise ValueError(f"artifact {artifact.id} names unknown stage {artifact.stage}")
        for stage in self.stages:
            for ident in stage.reads:
                upstream = self.artifact(ident).stage
                if keys.index(upstream) >= keys.index(stage.key):
                    raise ValueError(f"stage {stage.key} reads {ident}, written by a later stage {upstream}")

    def stage(self, key: str) -> Stage:
        """A stage by key (``01``) or notebook stem (``01_layer_similarity``)."""
        for stage in self.stages:
            if key in (stage.key, stage.stem, stage.notebook):
                return stage
        raise PrunePrivError(f"unknown stage {key!r}; stages: {', '.join(s.key for s in self.stages)}")

    def find_stage(self, key: str) -> Stage | None:
        """Like :meth:`stage`, ``None`` when unknown (a user's own notebook)."""
        return next((s for s in self.stages if key in (s.key, s.stem, s.notebook)), None)

    def artifact(self, ident: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.id == ident:
                return artifact
        raise PrunePrivError(f"unknown artifact {ident!r}")

    def find_artifact(self, ident: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.id == ident), None)

    def writes(self, key: str) -> tuple[Artifact, ...]:
        return tuple(a for a in self.artifacts if a.stage == key)

    def input_files(self, key: str) -> tuple[str, ...]:
        """Files under ``results/NAME/`` that stage ``key`` reads (what its fingerprint hashes)."""
        reads = (self.artifact(i) for i in self.stage(key).reads)
        return tuple(a.path for a in reads if a.kind in RESULT_KINDS)

    @property
    def notebooks(self) -> dict[str, str]:
        """``{key: notebook file}`` in order."""
        return {s.key: s.notebook for s in self.stages}


_BASE = ("seed", "device", "precision", "model", "data")
_CLAIMS = ("tab:layer-similarity", "data:pruned-layers", "tab:pruning", "tab:latency", "tab:finetuning",
           "tab:synthetic", "tab:memorization", "data:membership-inference", "data:canary-exposure", "tab:audit",
           "tab:federated", "data:federated", "tab:private-selection", "data:private-selection-draws",
           "data:private-selection", "tab:compression-baselines", "tab:pruning-healed")
_PAPER_TABLES = ("pruning", "latency", "finetune", "memorization", "audit", "federated", "selection", "compression",
                 "healing")

REGISTRY = Registry(
    stages=(
        Stage("01", "01_layer_similarity.ipynb", _BASE + ("similarity",)),
        Stage("02", "02_layer_pruning.ipynb", _BASE + ("pruning", "latency"), ("data:layer-similarity",)),
        Stage("03", "03_private_finetuning.ipynb", _BASE + ("finetune",), ("data:pruned-layers",)),
        Stage("04", "04_synthetic_data.ipynb", _BASE + ("memorization",), ("data:pruned-layers", "tab:finetuning")),
        Stage("05", "05_memorization.ipynb", _BASE + ("memorization",),
              ("data:pruned-layers", "tab:finetuning", "tab:synthetic")),
        Stage("06", "06_baselines.ipynb",
              _BASE + ("similarity", "pruning", "latency", "finetune", "memorization", "baselines"),
              ("data:layer-similarity", "tab:pruning", "data:pruned-layers", "tab:finetuning")),
        Stage("07", "07_paper.ipynb", (), _CLAIMS),
    ),
    artifacts=(
        Artifact("data:layer-similarity", "layer_similarity.json", "01", "json"),
        Artifact("tab:layer-similarity", "layer_similarity.csv", "01"),
        Artifact("fig:layer-similarity-heatmap", "layer_similarity_heatmap", "01", "figure"),
        Artifact("fig:adjacent-similarity", "adjacent_similarity", "01", "figure"),
        Artifact("tab:pruning", "pruning.csv", "02"),
        Artifact("fig:perplexity-vs-layers", "perplexity_vs_layers", "02", "figure"),
        Artifact("tab:latency", "latency.csv", "02"),
        Artifact("fig:latency-vs-layers", "latency_vs_layers", "02", "figure"),
        Artifact("data:pruned-layers", "pruned_layers.json", "02", "json"),
        Artifact("cache:finetune-runs", "finetune", "03", "folder"),
        Artifact("tab:finetuning", "finetune.csv", "03"),
        Artifact("fig:utility-vs-epsilon", "utility_vs_epsilon", "03", "figure"),
        Artifact("data:training-curves", "training_curves.csv", "03"),
        Artifact("fig:training-curves", "training_curves", "03", "figure"),
        Artifact("cache:synthetic-samples", "synthetic", "04", "folder"),
        Artifact("tab:synthetic", "synthetic.csv", "04"),
        Artifact("cache:attack-results", "memorization", "05", "folder"),
        Artifact("tab:memorization", "memorization.csv", "05"),
        Artifact("fig:epsilon-vs-memorization", "epsilon_vs_memorization", "05", "figure"),
        Artifact("data:membership-inference", "membership_inference.csv", "05"),
        Artifact("data:canary-exposure", "canary_exposure.csv", "05"),
        Artifact("tab:audit", "audit.csv", "05"),
        Artifact("tab:utility-matched", "utility_matched.csv", "05"),
        Artifact("fig:audit", "audit_vs_accountant", "05", "figure"),
        Artifact("tab:federated", "federated.csv", "06"),
        Artifact("data:federated", "federated.json", "06", "json"),
        Artifact("fig:federated-agreement", "federated_agreement", "06", "figure"),
        Artifact("cache:selection-runs", "baselines/selection", "06", "folder"),
        Artifact("data:private-selection-draws", "private_selection_draws.csv", "06"),
        Artifact("data:private-selection-frequencies", "private_selection_frequencies.csv", "06"),
        Artifact("data:private-selection", "private_selection.json", "06", "json"),
        Artifact("tab:private-selection", "private_selection.csv", "06"),
        Artifact("fig:private-selection", "private_selection", "06", "figure"),
        Artifact("cache:compression-runs", "baselines/compression", "06", "folder"),
        Artifact("tab:compression-baselines", "compression_baselines.csv", "06"),
        Artifact("data:compression-baselines", "compression_baselines.json", "06", "json"),
        Artifact("fig:compression-baselines", "compression_baselines", "06", "figure"),
        Artifact("cache:healing-runs", "baselines/healing", "06", "folder"),
        Artifact("tab:pruning-healed", "pruning_healed.csv", "06"),
        Artifact("fig:pruning-healed", "pruning_healed", "06", "figure"),
        Artifact("data:claims", "claims.csv", "07"),
        Artifact("tex:numbers", "numbers.tex", "07", "tex"),
        *(Artifact(f"tex:table-{stem}", f"tables/{stem}.tex", "07", "tex") for stem in _PAPER_TABLES),
    ),
)


def claim_files(registry: Registry = REGISTRY) -> tuple[str, ...]:
    """The result files the claims are computed from (what stage 07 reads, in order)."""
    return registry.input_files("07")
