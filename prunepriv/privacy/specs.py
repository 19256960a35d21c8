"""What one fine-tuning run is: its LoRA, privacy and training settings, how they
are checked, what the accountant says about them, and the digest that names them.

The specs have no defaults of their own: :func:`finetune_specs` builds them
from a profile's ``finetune`` section (:mod:`prunepriv.config` holds every
default). :func:`run_digest` hashes ``asdict()`` of the three specs, so their
field names, order and values are part of every saved run's identity.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

from prunepriv.config import Profile
from prunepriv.errors import DistributedConfigError, PrivacyConfigError
from prunepriv.privacy.accountant import rdp_epsilon, sigma_for_epsilon
from prunepriv.privacy.uses import DataUse


@dataclass
class LoRASpec:
    """peft LoRA settings."""

    rank: int
    alpha: int
    dropout: float
    target_modules: list[str]


@dataclass
class PrivacySpec:
    """DP-SGD settings; ``epsilon = inf`` is the non-private twin."""

    epsilon: float
    delta: float | None                 # None: 1 / (10 N)
    max_grad_norm: float
    noise_multiplier: float | None      # overrides epsilon when given
    accountant: str                     # calibrates σ; RDP and PRV are both reported

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None or math.isfinite(self.epsilon)


@dataclass
class TrainSpec:
    """Optimisation settings shared by private and non-private runs."""

    epochs: float
    learning_rate: float
    batch_size: int                     # expected logical (Poisson) batch size
    physical_batch_size: int
    max_length: int
    checkpoint_every: int
    seed: int
    noise: str                          # "secure" or "seeded": see prunepriv.privacy.noise
    warmup: float = 0.0                 # share of the steps with a linear warm-up (then a linear decay to 0)


@dataclass
class PrivacyRecord:
    """What the accountant says about one run (reported beside every result)."""

    private: bool
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon_rdp: float
    epsilon_prv: float | None
    max_grad_norm: float | None
    n_train: int
    noise: str                          # where the noise and batches came from (prunepriv.privacy.noise)
    data_uses: list                     # every use of data behind the model, this run last (prunepriv.privacy.uses)
    unit: str = "one training record"
    note: str = ("a canary inserted k times is k records: it is covered only by group "
                 "privacy (roughly k·ε), not by ε")


def finetune_specs(profile) -> tuple[LoRASpec, dict[float, PrivacySpec], TrainSpec]:
    """LoRA, per-ε privacy and training specs from a profile's ``finetune`` section (the one builder)."""
    f = profile.finetune
    lora = LoRASpec(f.lora_rank, f.lora_alpha, f.lora_dropout, list(f.target_modules))
    train = TrainSpec(f.epochs, f.learning_rate, f.batch_size, f.physical_batch_size, f.max_length,
                      f.checkpoint_every, profile.seed, profile.noise, f.warmup)
    privacy = {eps: PrivacySpec(epsilon=eps, delta=f.delta, max_grad_norm=f.max_grad_norm, noise_multiplier=None,
                                accountant=f.accountant)
               for eps in f.epsilons}
    return lora, privacy, train


def nonprivate_train(profile, train: TrainSpec) -> TrainSpec:
    """The training spec of the profile's non-private runs: ``train`` (the DP runs') with the
    ``finetune.nonprivate`` settings that are set (:class:`prunepriv.config.NonPrivateConfig`)."""
    n = profile.finetune.nonprivate
    changes = {k: getattr(n, k) for k in ("learning_rate", "batch_size", "epochs") if getattr(n, k) is not None}
    return replace(train, **changes)


def nonprivate_lora(profile, lora: LoRASpec) -> LoRASpec:
    """The LoRA spec of the profile's non-private runs: ``lora`` (the DP runs') with the ``finetune.nonprivate``
    rank, α and targets that are set."""
    n = profile.finetune.nonprivate
    return LoRASpec(n.lora_rank or lora.rank, n.lora_alpha or lora.alpha, lora.dropout,
                    list(n.target_modules) if n.target_modules else list(lora.target_modules))


def learning_rate_at(train: TrainSpec, step: int, steps: int) -> float:
    """The learning rate of logical step ``step`` (0-based) of ``steps``: a linear warm-up over the first
    ``ceil(warmup · steps)`` steps (step i at (i + 1) / (w + 1) of the peak), then a linear decay to 0
    after the last step (as Hugging Face's ``get_linear_schedule_with_warmup``); the peak throughout
    when ``warmup`` is 0 (the schedule of runs made before it existed)."""
    if not train.warmup:
        return train.learning_rate
    warm = math.ceil(train.warmup * steps)
    if step < warm:
        return train.learning_rate * (step + 1) / (warm + 1)
    return train.learning_rate * max(0.0, (steps - step) / max(1, steps - warm))


def run_seed(seed: int, run: str) -> int:
    """The training seed of one run of a sweep: the profile's ``seed`` and the run's folder name
    (e.g. ``pruned-eps-3``) hashed, so that every run draws its own Poisson batches and noise and
    compared runs are independent (a stage that reloads a run by folder reloads it with its seed)."""
    return int(hashlib.sha256(json.dumps([seed, run]).encode()).hexdigest()[:8], 16)


def default_specs() -> tuple[LoRASpec, PrivacySpec, TrainSpec]:
    """The built-in default profile's specs, with its non-private (ε = ∞) privacy spec."""
    lora, privacy, train = finetune_specs(Profile())
    return lora, privacy[math.inf], train


def epsilon_label(eps: float) -> str:
    """``inf`` or ``f"{eps:g}"``: how an ε is written in run folders, progress bars and tables."""
    return "inf" if math.isinf(eps) else f"{eps:g}"


def epsilon_text(eps: float) -> str:
    """An ε as a reader sees it in sentences: ``ε = 3`` or ``ε = ∞ (non-private)``."""
    return "ε = ∞ (non-private)" if math.isinf(eps) else f"ε = {epsilon_label(eps)}"


def privacy_label(privacy: PrivacySpec) -> str:
    """A spec's ε label, or ``σ=…`` when a fixed noise multiplier replaces the ε target."""
    if privacy.noise_multiplier is not None:
        return f"σ={privacy.noise_multiplier:g}"
    return epsilon_label(privacy.epsilon)


def check_privacy(spec: PrivacySpec, n_train: int) -> float:
    """Validate a privacy spec for ``n_train`` records; returns δ."""
    if spec.noise_multiplier is None and not spec.epsilon > 0:
        raise PrivacyConfigError(f"epsilon must be > 0 (or inf for no privacy), got {spec.epsilon}")
    if spec.noise_multiplier is not None and not spec.noise_multiplier > 0:
        raise PrivacyConfigError(f"noise multiplier must be > 0, got {spec.noise_multiplier}")
    if not spec.max_grad_norm > 0:
        raise PrivacyConfigError(f"clipping norm must be > 0, got {spec.max_grad_norm}")
    if spec.accountant not in ("rdp", "prv"):
        raise PrivacyConfigError(f"accountant must be 'rdp' or 'prv', got {spec.accountant!r}")
    delta = spec.delta if spec.delta is not None else 1.0 / (10 * n_train)
    if not 0 < delta < 1.0 / n_train:
        raise PrivacyConfigError(
            f"delta must be in (0, 1/N) = (0, {1.0 / n_train:.3g}) for N = {n_train} training records, got {delta}")
    return delta


def check_distributed(privacy: PrivacySpec, world_size: int) -> None:
    """Distributed runs (world size > 1) are for DP-SGD; the non-private twin runs in one process."""
    if world_size > 1 and not privacy.private:
        raise DistributedConfigError(
            f"distributed fine-tuning (world size {world_size}) is for DP-SGD only: give a finite epsilon or a "
            "noise multiplier, or run the non-private twin (epsilon = inf) in a single process")


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "rdp") -> float:
    """ε of ``steps`` Poisson-subsampled Gaussian steps, from Opacus's accountant."""
    if steps == 0:
        return 0.0
    if accountant == "rdp":
        return rdp_epsilon([(noise_multiplier, sample_rate, steps)], delta)
    return prv_epsilon(noise_multiplier, sample_rate, steps, delta)


@functools.lru_cache(maxsize=256)
def prv_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε from Opacus's PRV accountant (Gopi et al. 2021), cached: the same run is asked several times."""
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


def total_steps(train: TrainSpec, n_train: int) -> int:
    """Logical steps of a run: ``epochs / q`` rounded up (at least one), q = batch_size / n_train."""
    return max(1, math.ceil(train.epochs / (train.batch_size / n_train)))


def split_noise_multiplier(privacy: PrivacySpec, train: TrainSpec, n_train: int, runs: int) -> float:
    """σ of each of ``runs`` identical DP-SGD runs on the same records whose composition reaches the spec's ε:
    the runs' histories compose as one run of ``runs`` times the steps (same σ and q), so σ is the one
    that reaches ε in that many steps (DPKD's teacher and student, :mod:`prunepriv.compress.distill`)."""
    delta = check_privacy(privacy, n_train)
    return sigma_for_epsilon(privacy.epsilon, delta, train.batch_size / n_train,
                             runs * total_steps(train, n_train), privacy.accountant)


def run_noise_multiplier(privacy: PrivacySpec, sample_rate: float, steps: int, delta: float) -> float:
    """σ of a run: the spec's own, the one that reaches its ε target in ``steps`` steps, or 0 without privacy."""
    if not privacy.private:
        return 0.0
    return privacy.noise_multiplier or sigma_for_epsilon(privacy.epsilon, delta, sample_rate, steps,
                                                            privacy.accountant)


def privacy_record(privacy: PrivacySpec, sigma: float, q: float, steps: int, delta: float, n: int,
                   prv: bool, noise: str, earlier: list[DataUse]) -> PrivacyRecord:
    """The accountant's record of ``steps`` steps (PRV only when ``prv``: a finished run); ``noise`` says
    where its randomness came from (:func:`prunepriv.privacy.noise.noise_note`), ``earlier`` the uses of
    data recorded on the base model (:mod:`prunepriv.privacy.uses`), to which this run's own is added."""
    if not privacy.private:
        own = DataUse("LoRA fine-tuning (non-private)", "training records (private)", n, private=True)
        return PrivacyRecord(False, 0.0, q, steps, delta, math.inf, math.inf, None, n, "none (non-private)",
                             [asdict(u) for u in [*earlier, own]])
    eps = epsilon_for(sigma, q, steps, delta, "rdp")
    own = DataUse("LoRA fine-tuning (DP-SGD)", "training records (private)", n, private=True, epsilon=eps)
    return PrivacyRecord(True, sigma, q, steps, delta, eps,
                         epsilon_for(sigma, q, steps, delta, "prv") if prv else None, privacy.max_grad_norm, n,
                         noise, [asdict(u) for u in [*earlier, own]])


TRAINING_RULES = "non-private batch gradient clipped at C; warm-up and linear decay"   # bump when a step computes something else


def run_digest(lora: LoRASpec, privacy: PrivacySpec, train: TrainSpec, n_train: int, extra: str = "") -> str:
    """Fingerprint of a run's settings and training rules; a checkpoint only resumes (and a finished run
    is only reused by) the same run."""
    blob = json.dumps([asdict(lora), {**asdict(privacy), "epsilon": str(privacy.epsilon)}, asdict(train),
                       n_train, extra, TRAINING_RULES], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


RECORD_FORMAT = "start+text+eos;length-sorted-physical-batches"   # see prunepriv.lm.text.record_ids; part of every run's digest


def data_fingerprint(texts: list[str], model) -> str:
    """The training texts, their record format and the base model's kept layers, hashed."""
    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
    return f"{RECORD_FORMAT}|{digest}|{getattr(model.config, 'prunepriv_kept_layers', '')}"
