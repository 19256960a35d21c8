"""Profiles: validated run settings read from ``prunepriv/profiles/NAME.yaml`` or a YAML path.

A profile is nested YAML with the sections below. Unknown keys, wrong types
and out-of-range values raise :class:`ConfigError` naming the key, so that a
typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from prunepriv.errors import ConfigError

PUBLIC_EVAL_PASSAGES = 96     # general English passages kept for evaluation when calibration is public
SECRET_DIGITS = 4                       # short secrets: four tokens to memorize, four to rank among the candidates
AUDIT_SECRET_DIGITS = 8                 # audit canaries: more secret tokens for the audit's score to sum (docs/measurements.md)

STRATEGIES = ("cosine", "block", "last", "random", "greedy-loss")
PRECISIONS = ("auto", "fp32", "bf16")   # see prunepriv.lm.precision
ACCOUNTANTS = ("rdp", "prv")
NOISE_SOURCES = ("secure", "seeded")     # see prunepriv.privacy.noise
CALIBRATION_SOURCES = ("public", "private")   # see prunepriv.stages.experiments.calibration_texts
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# the vocabularies of the command line, here so that the parser needs no heavy import
TUNABLE = ("learning_rate", "batch_size", "epochs", "warmup", "lora_rank", "lora_alpha", "target_modules",
           "max_grad_norm")                # finetune settings `prunepriv tune` searches
SAVE_DTYPES = ("source", "fp32", "bf16", "fp16")   # what `prunepriv prune` may store a model in
CANARY_FIELDS = ("n_canaries", "canary_repetitions", "n_heldout_canaries", "n_audit_canaries")   # `prunepriv canaries`


@dataclass
class DataConfig:
    """The private corpus: synthetic clinical notes, or a user's file."""

    source: str = "synthetic"          # "synthetic" or a path to .jsonl/.csv/.txt
    text_field: str = "text"           # field holding the text in JSONL/CSV files
    n_patients: int = 200              # synthetic: number of patients (identities)
    notes_per_patient: int = 3         # synthetic: notes written per patient
    n_canaries: int = 8                # Secret-Sharer canaries in training data
    canary_repetitions: list[int] = field(default_factory=lambda: [1, 4, 16]) # times each trained canary is inserted (cycled over the canaries)
    n_heldout_canaries: int = 8        # canaries of the same format never trained on
    n_audit_canaries: int = 0          # one-run audit canaries, each trained on with probability 1/2
    heldout_fraction: float = 0.2      # patients (and their PII) kept out of training
    calibration_fraction: float = 0.1  # patients used only to measure layer similarity
    general_passages: int = 64         # general English passages for perplexity
    calibration: str = "public"        # text that chooses layers and Wanda masks: public (general English) or private (calibration split)

    def validate(self) -> None:
        _positive(self, "n_patients", "notes_per_patient", "general_passages")
        _non_negative(self, "n_canaries", "n_heldout_canaries", "n_audit_canaries")
        if not self.canary_repetitions or any(int(r) < 1 for r in self.canary_repetitions):
            raise ConfigError("data.canary_repetitions must be a non-empty list of integers >= 1")
        for key in ("heldout_fraction", "calibration_fraction"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"data.{key} must be in (0, 1), got {value}")
        if self.heldout_fraction + self.calibration_fraction >= 1.0:
            raise ConfigError("data.heldout_fraction + data.calibration_fraction must be below 1")
        if self.calibration not in CALIBRATION_SOURCES:
            raise ConfigError(f"data.calibration must be one of {', '.join(CALIBRATION_SOURCES)}, "
                              f"got {self.calibration!r}")


@dataclass
class SimilarityConfig:
    """Layer-similarity measurement on calibration text (notebook 01)."""

    n_samples: int = 64                # calibration records whose hidden states are compared
    max_length: int = 128              # tokens per calibration record
    batch_size: int = 8                # records per forward pass

    def validate(self) -> None:
        _positive(self, "n_samples", "max_length", "batch_size")


@dataclass
class PruningConfig:
    """Layer-removal sweep (notebook 02)."""

    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES)) # layer-choice strategies compared in the sweep
    paper_strategy: str = "cosine"     # the strategy later stages fine-tune
    remove: list[int] = field(default_factory=lambda: [0, 2, 4, 6, 8, 10, 12]) # numbers of layers removed in the sweep
    paper_remove: int = 8              # layers removed for the paper's pruned model
    eval_samples: int = 64             # held-out records / general passages per point
    eval_max_length: int = 128         # tokens per record when measuring perplexity
    batch_size: int = 8                # records per forward pass
    greedy_samples: int = 16           # calibration records scoring SLEB candidates

    def validate(self) -> None:
        _positive(self, "eval_samples", "eval_max_length", "batch_size", "greedy_samples")
        for name in list(self.strategies) + [self.paper_strategy]:
            check_strategy(name)
        if not self.remove or any(int(k) < 0 for k in self.remove):
            raise ConfigError("pruning.remove must be a non-empty list of integers >= 0")
        if self.paper_remove < 1:
            raise ConfigError(f"pruning.paper_remove must be >= 1, got {self.paper_remove}")


@dataclass
class LatencyConfig:
    """Prefill and decode latency versus layers removed (notebook 02, `bench`)."""

    remove: list[int] = field(default_factory=lambda: [0, 4, 8, 12]) # numbers of layers removed in the latency sweep
    prompt_length: int = 128           # prompt tokens (prefill)
    new_tokens: int = 32               # generated tokens (decode)
    repeats: int = 5                   # timed repetitions (the median is reported)
    warmup: int = 2                    # untimed repetitions first

    def validate(self) -> None:
        _positive(self, "prompt_length", "new_tokens", "repeats")
        _non_negative(self, "warmup")
        if not self.remove or any(int(k) < 0 for k in self.remove):
            raise ConfigError("latency.remove must be a non-empty list of integers >= 0")


@dataclass
class NonPrivateConfig:
    """How the non-private runs (ε = ∞ and the utility-matched ones) train where they differ from the DP runs:
    without noise, small batches, many steps and a larger adapter learn best (Li et al. 2022), with the DP
    runs' large noisy batches and tiny adapter they would learn little and "DP memorizes less" could be
    "the non-private run learned less". Each is the best recipe found on the public proxy for its kind
    (``prunepriv tune``). ``None``: the DP runs' value."""

    learning_rate: Optional[float] = None   # Adam learning rate of the non-private runs
    batch_size: Optional[int] = None        # their expected logical batch
    epochs: Optional[float] = None          # their passes over the training records
    lora_rank: Optional[int] = None         # their LoRA rank (without noise, more trainable dimensions cost nothing)
    lora_alpha: Optional[int] = None        # their LoRA scaling α
    target_modules: Optional[list[str]] = None   # the linear layers their adapters sit on

    def validate(self) -> None:
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("finetune.nonprivate.target_modules must name at least one module (or be null)")
        for key in ("learning_rate", "batch_size", "epochs", "lora_rank", "lora_alpha"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"finetune.nonprivate.{key} must be > 0 (or null: the DP runs' value), got {value}")


@dataclass
class FinetuneConfig:
    """LoRA + DP-SGD fine-tuning over an ε grid (notebook 03)."""

    epsilons: list[float] = field(default_factory=lambda: [math.inf, 8.0, 3.0, 1.0]) # target ε of each run; .inf: the non-private twin
    models: list[str] = field(default_factory=lambda: ["unpruned", "pruned"]) # which models are fine-tuned: unpruned and/or pruned
    replicates: int = 1                # independent runs per (model, ε), each its own batches, noise and canaries; tables give mean and 95% interval across them
    model_epsilons: Optional[dict[str, list[float]]] = None   # per model, the ε values it runs (None, or a model left out: every ε)
    replicate_models: Optional[list[str]] = None    # models that run `replicates` times (None: every model; the others run once)
    replicate_epsilons: Optional[list[float]] = None  # ε values that run `replicates` times (None: every ε; the utility-matched runs follow utility_match)
    utility_match: Optional[float] = None  # also train each model non-privately, stopped at the held-out perplexity of its DP run at this ε (one of epsilons); None: no such run
    delta: Optional[float] = None      # δ of DP-SGD; None: 1 / (10 N), N the training records
    max_grad_norm: float = 1.0         # per-record clipping norm C of DP-SGD
    accountant: str = "rdp"            # calibrates σ to the target ε: rdp or prv (both are reported)
    lora_rank: int = 8                 # LoRA rank r
    lora_alpha: int = 16               # LoRA scaling α (the update is scaled by α / r)
    lora_dropout: float = 0.0          # dropout on the LoRA input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"]) # linear layers that get LoRA adapters
    epochs: float = 1.0                # passes over the training records (expected, under Poisson sampling)
    learning_rate: float = 2e-3        # Adam learning rate (its peak: see warmup)
    warmup: float = 0.0                # share of a run's steps over which the learning rate rises linearly; it then decays linearly to 0
    nonprivate: NonPrivateConfig = field(default_factory=NonPrivateConfig)   # the non-private runs' own optimisation settings
    batch_size: int = 32               # expected logical batch size (records per DP-SGD step)
    physical_batch_size: int = 8       # records per forward/backward pass (memory only)
    max_length: int = 128              # tokens per training record (longer ones are cut)
    checkpoint_every: int = 10         # steps between checkpoints (a killed run resumes from the last)
    eval_samples: int = 64             # held-out records / general passages per perplexity
    match_samples: int = 0             # held-out records a utility-matched run checks after each step (0: eval_samples); its target is the DP run's perplexity on the same records
    save_merged: bool = False          # also save each run's LoRA-merged model

    def validate(self) -> None:
        _positive(self, "lora_rank", "lora_alpha", "batch_size", "physical_batch_size", "max_length",
                  "checkpoint_every", "eval_samples", "replicates")
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ConfigError(f"finetune.epsilons must be numbers > 0 (.inf for no privacy), got {self.epsilons}")
        unknown = [m for m in self.models if m not in ("unpruned", "pruned")]
        if unknown or not self.models:
            raise ConfigError(f"finetune.models must list 'unpruned' and/or 'pruned', got {self.models}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"finetune.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"finetune.delta must be in (0, 1/N), got {self.delta}")
        if self.utility_match is not None and (not math.isfinite(self.utility_match)
                                               or self.utility_match not in self.epsilons):
            raise ConfigError(f"finetune.utility_match must be one of the finite finetune.epsilons "
                              f"{[e for e in self.epsilons if math.isfinite(e)]}, got {self.utility_match}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"finetune.accountant must be 'rdp' or 'prv', got {self.accountant!r}")
        if not self.epochs > 0 or not self.learning_rate > 0:
            raise ConfigError("finetune.epochs and finetune.learning_rate must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"finetune.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"finetune.warmup must be in [0, 1) (a share of the steps), got {self.warmup}")
        _non_negative(self, "match_samples")
        self.nonprivate.validate()
        # the three selections below only narrow what runs: naming a model the profile does not run (a
        # --set finetune.models=[unpruned] on top of a shipped profile) is allowed, a misspelt one is not
        for model, values in (self.model_epsilons or {}).items():
            if model not in ("unpruned", "pruned"):
                raise ConfigError(f"finetune.model_epsilons names {model!r}; models are 'unpruned' and 'pruned'")
            if model in self.models and (not values or any(e not in self.epsilons for e in values)):
                raise ConfigError(f"finetune.model_epsilons.{model} must list values of finetune.epsilons, got {values}")
        if self.replicate_models is not None and (unknown := set(self.replicate_models) - {"unpruned", "pruned"}):
            raise ConfigError(f"finetune.replicate_models {sorted(unknown)}: models are 'unpruned' and 'pruned'")
        if self.replicate_epsilons is not None and any(not e > 0 for e in self.replicate_epsilons):
            raise ConfigError(f"finetune.replicate_epsilons must be numbers > 0, got {self.replicate_epsilons}")

    def epsilons_of(self, model: str) -> list[float]:
        """The ε values ``model`` runs at: its ``model_epsilons`` entry, else every one of ``epsilons``."""
        return list((self.model_epsilons or {}).get(model) or self.epsilons)

    def replicates_of(self, model: str, epsilon: float) -> int:
        """How many independent runs (model, ε) gets: ``replicates`` where ``replicate_models`` and
        ``replicate_epsilons`` (None: all) both include it, else one."""
        chosen = ((self.replicate_models is None or model in self.replicate_models)
                  and (self.replicate_epsilons is None or epsilon in self.replicate_epsilons))
        return self.replicates if chosen else 1


@dataclass
class MemorizationConfig:
    """Synthetic data (notebook 04) and memorization attacks (notebook 05)."""

    n_samples: int = 32                # synthetic records per fine-tuned model
    max_new_tokens: int = 96           # tokens generated per synthetic record
    temperature: float = 1.0           # sampling temperature
    top_k: int = 0                     # 0: no top-k filter
    top_p: float = 1.0                 # 1.0: no nucleus filter
    batch_size: int = 16               # records per forward pass or generation batch
    max_length: int = 128              # tokens per record when scoring
    quality_references: int = 64       # held-out records that synthetic samples are compared with
    n_candidates: int = 64             # exposure: random secrets ranked against each canary
    mia_samples: int = 64              # members and non-members each
    min_k: float = 0.2                 # Min-K% Prob
    prefix_records: int = 16           # prefix attack: records per split
    prefix_tokens: int = 32            # prefix attack: tokens of the record given to the model
    suffix_tokens: int = 24            # prefix attack: tokens of its true continuation compared
    rank_top_k: int = 8                # extraction: most suspicious samples inspected per metric
    near_copy_f1: float = 0.95         # BERTScore F1 at which a sample counts as a near-copy
    audit_confidence: float = 0.95     # one-run audit: confidence of the ε lower bound
    audit_delta: float = 1e-6          # δ of the audit; the accountant's ε is recomputed at this δ

    def validate(self) -> None:
        _positive(self, "n_samples", "max_new_tokens", "batch_size", "max_length", "quality_references",
                  "n_candidates", "mia_samples", "prefix_records", "prefix_tokens", "suffix_tokens", "rank_top_k")
        if not self.temperature > 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("memorization sampling needs temperature > 0, top_k >= 0 and top_p in (0, 1]")
        if self.n_candidates >= 10 ** SECRET_DIGITS - 1:          # distinct secrets besides the canary's own
            raise ConfigError(f"memorization.n_candidates must be below {10 ** SECRET_DIGITS - 1} (secrets have "
                              f"{SECRET_DIGITS} digits), got {self.n_candidates}")
        if not 0 <= self.audit_delta < 1:
            raise ConfigError(f"memorization.audit_delta must be in [0, 1), got {self.audit_delta}")
        for key in ("min_k", "near_copy_f1", "audit_confidence"):
            if not 0 < getattr(self, key) < 1 + (key == "near_copy_f1"):
                raise ConfigError(f"memorization.{key} must be in (0, 1), got {getattr(self, key)}")


@dataclass
class BaselinesConfig:
    """The related systems compared in notebook 06 (federated pruning, private
    layer selection, DP unstructured compression)."""

    epsilon: float = 3.0               # DP-LoRA ε shared by every compressed model of the comparison
    sparsity: float = 0.5              # unstructured sparsity of the magnitude, Wanda and DPIMP baselines (layer removal takes out as many parameters)
    magnitude: bool = True             # the one-shot magnitude baseline (one more DP run)
    dpimp: bool = True                 # DPIMP: prune during DP fine-tuning (Mireshghallah et al. 2022), one more DP run
    dpimp_rounds: int = 4              # DPIMP: pruning rounds during DP fine-tuning, sparsity rising to baselines.sparsity
    dpkd: bool = True                  # DPKD: a DP teacher distilled into the layer-removed student, ε split over both
    dpkd_alpha: float = 0.5            # DPKD: weight of the distillation term (1 - alpha: next-token NLL)
    dpkd_temperature: float = 1.0      # DPKD: softmax temperature of the soft labels
    heal_strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))  # layer choices also DP-healed at baselines.epsilon
    n_clients: int = 4                 # federated pruning: simulated clients
    client_samples: int = 10           # records per client for its local statistics
    selection_epsilons: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0, math.inf]) # ε values of private layer selection (.inf: non-private)
    selection_draws: int = 20          # noise draws per selection ε (which layers are chosen)
    selection_clip: float = 0.15       # L2 bound on one record's Block Influence minus the public reference
    selection_samples: int = 0         # training records scored for private selection (0: all of them)
    selection_scored_draws: int = 3    # noise draws per selection ε whose pruned model's perplexity is measured
    selection_finetune: list[float] = field(default_factory=lambda: [math.inf, 1.0])   # selection ε values whose choice is DP fine-tuned (.inf: the non-private choice)
    max_length: int = 128              # tokens per calibration record (perplexities follow finetune's protocol)
    batch_size: int = 8                # records per forward pass

    def validate(self) -> None:
        _positive(self, "n_clients", "client_samples", "selection_draws", "max_length",
                  "batch_size", "dpimp_rounds", "selection_scored_draws")
        _non_negative(self, "selection_samples")
        if not self.epsilon > 0 or not math.isfinite(self.epsilon):
            raise ConfigError(f"baselines.epsilon must be a finite number > 0, got {self.epsilon}")
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"baselines.sparsity must be in (0, 1), got {self.sparsity}")
        if not self.selection_clip > 0:
            raise ConfigError(f"baselines.selection_clip must be > 0, got {self.selection_clip}")
        if not 0 <= self.dpkd_alpha <= 1 or not self.dpkd_temperature > 0:
            raise ConfigError(f"baselines.dpkd_alpha must be in [0, 1] and dpkd_temperature > 0, got "
                              f"{self.dpkd_alpha} and {self.dpkd_temperature}")
        for name in self.heal_strategies:
            check_strategy(name)
        if not self.selection_epsilons or any(not e > 0 for e in self.selection_epsilons):
            raise ConfigError("baselines.selection_epsilons must be numbers > 0 (.inf: non-private selection)")
        for eps in self.selection_finetune:
            if eps not in self.selection_epsilons:
                raise ConfigError(f"baselines.selection_finetune must list values of baselines.selection_epsilons, "
                                  f"got {eps}")


@dataclass
class Profile:
    """One run's settings; ``name`` decides where results and figures go."""

    name: str = "paper"                # names results/NAME/ and figures/NAME/
    seed: int = 0                      # seeds data, sampling and every random choice
    device: str = "auto"               # "auto", "cpu", "cuda", "cuda:N"
    precision: str = "auto"            # "auto" (bf16 where the hardware multiplies it natively), "fp32", "bf16"
    noise: str = "secure"              # DP noise and batches: secure (OS entropy) or seeded (from seed; research only)
    model: str = "embedded"            # "embedded", a local HF folder, or a hub id
    data: DataConfig = field(default_factory=DataConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    source: str = ""                   # path the profile was read from (not a YAML key)

    def validate(self) -> None:
        if not PROFILE_NAME.fullmatch(self.name):
            raise ConfigError(f"profile name must be a plain word (letters, digits, '-', '_', '.', not "
                              f"starting with '.'), got {self.name!r}: it names the results folder")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.noise not in NOISE_SOURCES:
            raise ConfigError(f"noise must be one of {', '.join(NOISE_SOURCES)}, got {self.noise!r}")
        for section in (self.data, self.similarity, self.pruning, self.latency, self.finetune,
                        self.memorization, self.baselines):
            section.validate()
        if missing := set(self.baselines.heal_strategies) - set(self.pruning.strategies):
            raise ConfigError(f"baselines.heal_strategies {sorted(missing)} are not in pruning.strategies: "
                              "notebook 06 heals the layer choices that notebook 02 made")
        evaluation = self.data.general_passages
        if self.data.calibration == "public" and evaluation > PUBLIC_EVAL_PASSAGES:
            raise ConfigError(f"with data.calibration: public at most {PUBLIC_EVAL_PASSAGES} general English passages "
                              f"evaluate (the others calibrate); data.general_passages asks for {evaluation}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        out["finetune"]["epsilons"] = [str(e) for e in out["finetune"]["epsilons"]]   # JSON has no inf
        if out["finetune"]["model_epsilons"] is not None:
            out["finetune"]["model_epsilons"] = {m: [str(e) for e in v] for m, v in out["finetune"]["model_epsilons"].items()}
        if out["finetune"]["replicate_epsilons"] is not None:
            out["finetune"]["replicate_epsilons"] = [str(e) for e in out["finetune"]["replicate_epsilons"]]
        out["baselines"]["selection_epsilons"] = [str(e) for e in out["baselines"]["selection_epsilons"]]
        out["baselines"]["selection_finetune"] = [str(e) for e in out["baselines"]["selection_finetune"]]
        return out

    def digest(self) -> str:
        """sha256 of the settings, for provenance."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


REPO_ROOT = Path(__file__).resolve().parents[1]


def in_checkout() -> bool:
    """Whether prunepriv runs from a checkout of its repository (notebooks and pyproject beside it)."""
    return (REPO_ROOT / "notebooks").is_dir() and (REPO_ROOT / "pyproject.toml").is_file()


def batch_root() -> Path:
    """Where ``prunepriv reproduce`` and ``verify`` write and read by default: the repository root in a
    checkout (where the committed reference lives, wherever the command is run from), else the working folder."""
    return REPO_ROOT if in_checkout() else Path.cwd()


def profile_choices(root: Path) -> str:
    """The shipped profiles with the time their last run under ``root`` (the committed reference run, in a
    checkout) took, e.g. ``paper (last run 95 min), smoke (not run here yet)``."""
    parts = []
    for name in sorted(p.stem for p in profiles_dir().glob("*.yaml")):
        notebooks = sorted((root / "results" / name / "notebooks").glob("*.ipynb"))
        seconds = sum(json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("duration") or 0
                      for nb in notebooks)
        parts.append(f"{name} ({f'last run {seconds / 60:.0f} min' if seconds else 'not run here yet'})")
    return ", ".join(parts)


def check_strategy(name: str) -> str:
    """Return ``name`` if it is a known pruning strategy, else raise ConfigError."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown pruning strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return name


def profiles_dir() -> Path:
    """The shipped profiles, ``prunepriv/profiles/`` (package data: present after ``pip install .`` too)."""
    return Path(__file__).resolve().parent / "profiles"


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A profile name (``smoke``) or a path to a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"profile file not found: {path}")
        return path
    candidate = profiles_dir() / f"{text}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in profiles_dir().glob("*.yaml"))
        hint = difflib.get_close_matches(text, known, n=1)
        raise ConfigError(f"unknown profile {text!r}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                          + f"; known profiles: {', '.join(known) or 'none'}")
    return candidate


def load_profile(name_or_path: str | Path | None, overrides: dict[str, Any] | None = None) -> Profile:
    """Read, merge ``overrides`` (nested dict) into, and validate a profile.

    ``None`` is the built-in defaults (the dataclass fields below), named ``default``.
    """
    raw, path = {"name": "default"}, None
    if name_or_path is not None:
        path = resolve_profile_path(name_or_path)
        raw = _read_yaml(path)
        raw.setdefault("name", path.stem)
    if overrides:
        raw = _merge(raw, overrides)
    profile = _build(Profile, raw, prefix="")
    profile.source = str(path) if path else ""
    profile.validate()
    return profile


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"profile {path} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path} must be a mapping of keys to values")
    return raw


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, raw: dict, prefix: str):
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if not (cls is Profile and f.name == "source")}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(f"unknown profile key '{prefix}{key}'{suggestion}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"profile key {key!r} must be a mapping")
        return _build(hint, value, prefix=f"{key}.")
    origin = get_origin(hint)
    if origin is dict:
        _, item = get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"profile key {key!r} must be a mapping, got {value!r}")
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"profile key {key!r} must be a list, got {value!r}")
        return [_coerce(item, v, key) for v in value]
    if origin is Union:
        if value is None and type(None) in get_args(hint):
            return None
        return _coerce(next(a for a in get_args(hint) if a is not type(None)), value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"profile key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"profile key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
            return math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"profile key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"profile key {key!r} must be a string, got {value!r}")
        return str(value)
    return value


def _section_name(obj: Any) -> str:
    return {
        DataConfig: "data", SimilarityConfig: "similarity", NonPrivateConfig: "finetune.nonprivate",
        PruningConfig: "pruning", LatencyConfig: "latency", FinetuneConfig: "finetune",
        MemorizationConfig: "memorization", BaselinesConfig: "baselines",
    }.get(type(obj), type(obj).__name__)


def _positive(obj: Any, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) < 1:
            raise ConfigError(f"{_section_name(obj)}.{key} must be >= 1, got {getattr(obj, key)}")


def _non_negative(obj: Any, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) < 0:
            raise ConfigError(f"{_section_name(obj)}.{key} must be >= 0, got {getattr(obj, key)}")
