"""LoRA fine-tuning under DP-SGD (Opacus), with a non-private twin.

Anchors: Abadi et al. 2016 (DP-SGD), Yu et al. 2022 "Differentially private
fine-tuning of language models" (LoRA + DP), Opacus (Yousefpour et al. 2021).

* Only LoRA parameters train; the model is moved to its device *before* LoRA
  and Opacus wrap it (a model moved afterwards can leave LoRA weights
  untouched while loss and ε look normal — the trainer checks after its
  first step that the LoRA weights moved).
* Logical batches are Poisson-sampled (``UniformWithReplacementSampler``),
  the sampling the accountant assumes, and split into physical batches by
  ``BatchMemoryManager``. The non-private run draws the same logical batches
  from the same seed and takes the same number of steps, with no noise; its
  batch gradient (not each record's) is clipped at C.
* The loss is a per-record mean token NLL, so each record's gradient does not
  depend on the other records of its batch (the sensitivity argument).
* Checkpoints every ``checkpoint_every`` logical steps hold the LoRA weights,
  optimizer state, accountant history, every RNG state and the step count; a
  killed run started again resumes and ends with the same steps and ε.
* Under ``torchrun`` (an initialised ``torch.distributed`` group of world
  size W > 1) the private run is spread over W processes with Opacus's
  ``DifferentiallyPrivateDistributedDataParallel`` and
  ``DistributedDPOptimizer``. Every rank draws the *same* global Poisson
  batch (q = batch_size / N, identically seeded generators) and trains on
  every W-th record of it after length sorting, so the logical batches, σ,
  q and the number of steps — hence ε — are those of the one-process run.
  Noise is added once (rank 0), the clipped sums are all-reduced, and only
  rank 0 writes files. See :class:`prunepriv.privacy.batching.RankShare`.

Module map: settings and accounting in :mod:`prunepriv.privacy.specs`, LoRA in
:mod:`prunepriv.lm.lora`, records and logical batches in
:mod:`prunepriv.privacy.batching`, checkpoints in
:mod:`prunepriv.privacy.checkpoint`, collectives in
:mod:`prunepriv.privacy.distributed`. Here: :func:`finetune` and its steps
(plan, wrap, resume, the private and the plain loop, outputs).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from prunepriv.cards import base_reference, write_adapter_card
from prunepriv.compress.pruning import KEPT_LAYERS_KEY
from prunepriv.errors import PrunePrivError
from prunepriv.lm.evaluation import sequence_nll
from prunepriv.lm.lora import add_lora, lora_parameters
from prunepriv.lm.precision import precision_of
from prunepriv.privacy.accountant import rdp_epsilon
from prunepriv.privacy.batching import (
    LengthSortedBatches,
    RankShare,
    TokenizedTexts,
    make_collate,
)
from prunepriv.privacy.checkpoint import (
    CHECKPOINT_FILE,
    finished_run,
    read_checkpoint,
    reload_adapter,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from prunepriv.privacy.distributed import (
    barrier,
    check_backend_device,
    check_ranks_agree,
    distributed_rank_world,
    from_rank0,
    global_loss,
    read_on_rank0,
)
from prunepriv.privacy.noise import noise_note, torch_generator
from prunepriv.privacy.record import TrainResult
from prunepriv.privacy.specs import (
    LoRASpec,
    PrivacyRecord,
    PrivacySpec,
    TrainSpec,
    check_distributed,
    check_privacy,
    data_fingerprint,
    default_specs,
    privacy_label,
    learning_rate_at,
    privacy_record,
    run_digest,
    run_noise_multiplier,
    total_steps,
)
from prunepriv.privacy.stopping import StopRule, check_rule
from prunepriv.privacy.uses import data_uses
from prunepriv.progress import tqdm
from prunepriv.results import atomic_write_json, atomic_write_text, share_like_umask

DEFAULT_LORA, DEFAULT_PRIVACY, DEFAULT_TRAIN = default_specs()   # the default profile's, non-private

# a per-record training loss, shape (B,): each record's value may depend on that record alone (sensitivity)
Loss = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class RunPlan:
    """What a run is before any weight moves: its size, accounting, digest and place."""

    output_dir: Path
    n: int
    rank: int
    world: int
    delta: float
    sample_rate: float
    total_steps: int
    sigma: float
    digest: str
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def checkpoint(self) -> Path:
        return self.output_dir / CHECKPOINT_FILE


@dataclass
class Trainer:
    """A run in progress: the wrapped model and optimizer, the accountant, the generators, the log."""

    plan: RunPlan
    privacy: PrivacySpec
    train: TrainSpec
    peft_model: nn.Module
    net: nn.Module                       # what the loss is computed with (Opacus's wrapper when private)
    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer
    accountant: Any
    sampler_gen: torch.Generator
    loader_gen: torch.Generator
    noise_gen: torch.Generator | None
    step: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, torch.Tensor] | None = None   # LoRA weights before the first step (the guard)
    bar: Any = None
    after_step: Callable[[Trainer], None] | None = None   # runs after each logical step (no checkpoints then)
    stop_rule: StopRule | None = None    # ends the run early once it holds (non-private runs only)
    previous: dict[str, torch.Tensor] | None = None   # LoRA weights before the last step (under a stop rule)
    stop_fraction: float | None = None   # the stop rule held: the fraction of the last step kept (finished)
    loss: Loss = sequence_nll            # per-record loss (distillation replaces it: prunepriv.compress.distill)

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose state is checkpointed (inside Opacus's wrapper when private)."""
        return self.optimizer.original_optimizer if self.privacy.private else self.optimizer

    def record(self, prv: bool) -> PrivacyRecord:
        p = self.plan
        return privacy_record(self.privacy, p.sigma, p.sample_rate, self.step, p.delta, p.n, prv=prv,
                              noise=noise_note(self.train.noise, self.train.seed),
                              earlier=data_uses(self.peft_model.get_base_model()))


class TrainingData(NamedTuple):
    dataset: TokenizedTexts
    batches: Any                         # logical batches of indices (this rank's share under torchrun)
    collate: Any
    loader: torch.utils.data.DataLoader


def finetune(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    output_dir: str | Path,
    lora: LoRASpec = DEFAULT_LORA,
    privacy: PrivacySpec = DEFAULT_PRIVACY,
    train: TrainSpec = DEFAULT_TRAIN,
    progress: bool = True,
    stop_after: int | None = None,
    after_step: Callable[[Trainer], None] | None = None,
    stop_rule: StopRule | None = None,
    loss: Loss | None = None,
) -> TrainResult:
    """Fine-tune ``model`` (already on its device) with LoRA, privately or not.

    Writes ``output_dir/adapter`` (peft ``save_pretrained``), ``train_log.csv``, ``privacy.json``
    and, while running, ``checkpoint.pt``, from which a run resumes. ``stop_after`` ends the call
    after that many logical steps in total (used to test resumption).
    ``after_step(trainer)`` runs after every logical step and may change the
    frozen weights (DPIMP, :mod:`prunepriv.compress.dpimp`); such a run is
    never resumed or reloaded (its adapter alone does not hold the model). ``stop_rule``
    ends a non-private run early; ``loss`` replaces the per-record NLL (its ``key`` enters the digest).

    Inside an initialised ``torch.distributed`` group of world size W > 1
    (``torchrun``), call it on every rank with the model on that rank's
    device: DP-SGD runs across the W processes with the accounting of one
    process (same σ, q and steps, so the same ε); only rank 0 reads and
    writes ``output_dir`` (what it reads is broadcast), every rank returns
    the same weights and record. A non-private run (``epsilon = inf``)
    under W > 1 is refused with :class:`DistributedConfigError`.
    """
    plan = plan_run(model, texts, output_dir, lora, privacy, train, after_step is not None, stop_rule,
                    getattr(loss, "key", None))
    done = None if after_step else read_on_rank0(lambda: finished_run(plan.output_dir, plan.digest), plan.rank,
                                                 plan.world, plan.device)
    seed_everything(train.seed)
    peft_model = add_lora(model, lora)                       # model is already on its device
    peft_model.train()
    if done is not None:                                     # finished earlier with these settings
        reload_adapter(plan.output_dir, peft_model, plan.rank, plan.world, plan.device)
        done.model = peft_model
        return done
    t = prepare_trainer(peft_model, privacy, train, plan)
    t.after_step, t.stop_rule, t.loss = after_step, stop_rule, loss or sequence_nll
    if after_step is None:
        resume(t)
    resumed_from = t.step
    data = prepare_data(tokenizer, texts, t)
    t.initial = {k: v.detach().clone() for k, v in t.params.items()} if t.step == 0 else None
    start = time.perf_counter()
    t.bar = tqdm(total=plan.total_steps, initial=t.step, desc=f"finetune ε={privacy_label(privacy)}",
                 disable=not progress or plan.rank != 0, leave=False)
    if plan.rank == 0:
        plan.output_dir.mkdir(parents=True, exist_ok=True)
    private_loop(t, data.loader, stop_after) if privacy.private else plain_loop(t, data, stop_after)
    t.bar.close()
    return finish(t, time.perf_counter() - start, resumed_from)


def plan_run(model: nn.Module, texts: list[str], output_dir: str | Path, lora: LoRASpec, privacy: PrivacySpec,
             train: TrainSpec, hooked: bool = False, stop_rule: StopRule | None = None,
             loss_key: str | None = None) -> RunPlan:
    """Check the settings against the data and the process group; fix σ, q, the step count and the digest
    (``hooked``: a run with an ``after_step`` hook, never taken for a plain run with the same settings;
    ``stop_rule`` and a replaced loss (``loss_key``): their keys enter the digest)."""
    output_dir = Path(output_dir)
    n = len(texts)
    rank, world = distributed_rank_world()
    if n < train.batch_size:
        raise PrunePrivError(f"training set has {n} records, fewer than one batch ({train.batch_size})")
    delta = check_privacy(privacy, n)
    check_distributed(privacy, world)
    if stop_rule is not None and privacy.private:
        raise PrunePrivError("a stopping rule reads data at every step that no accountant covers: "
                             "only a non-private run (epsilon = inf) takes one")
    sample_rate = train.batch_size / n
    steps = total_steps(train, n)
    sigma = run_noise_multiplier(privacy, sample_rate, steps, delta)
    extra = data_fingerprint(texts, model)
    if world > 1:                                            # one-process digests stay as they were
        extra += f"|world_size={world}"
    if precision_of(model) != "fp32":                        # fp32 digests stay as they were
        extra += f"|precision={precision_of(model)}"
    if data_uses(model):                                     # a record is never reloaded with other uses
        extra += "|uses=" + json.dumps([asdict(u) for u in data_uses(model)], sort_keys=True)
    if hooked:
        extra += "|after_step"
    if stop_rule is not None:
        extra += f"|stop={stop_rule.key}"
    if loss_key is not None:
        extra += f"|loss={loss_key}"
    digest = run_digest(lora, privacy, train, n, extra=extra)
    device = next(model.parameters()).device
    if world > 1:
        check_backend_device(device)
    return RunPlan(output_dir, n, rank, world, delta, sample_rate, steps, sigma, digest, device)


def prepare_trainer(peft_model: nn.Module, privacy: PrivacySpec, train: TrainSpec, plan: RunPlan) -> Trainer:
    """Optimizer, seeded generators and accountant; under DP-SGD the model and optimizer wrapped by Opacus."""
    from opacus.accountants import RDPAccountant

    params = lora_parameters(peft_model)
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(params.values(), lr=train.learning_rate, weight_decay=0.0)
    sampler_gen = sampler_generator(train, plan)
    loader_gen = torch.Generator().manual_seed(train.seed + 1)   # unused by a batch sampler without workers
    noise_gen = torch_generator(train.noise, train.seed + 2, plan.device) if privacy.private else None
    accountant = RDPAccountant()
    net: nn.Module = peft_model
    if privacy.private:
        net, optimizer = wrap_private(peft_model, optimizer, privacy, train, plan, noise_gen)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    return Trainer(plan, privacy, train, peft_model, net, params, optimizer, accountant, sampler_gen, loader_gen,
                   noise_gen)


def sampler_generator(train: TrainSpec, plan: RunPlan) -> torch.Generator:
    """The Poisson draws of the logical batches (secret unless seeded: subsampling amplification
    assumes nobody knows which records a step used); under W > 1 every rank takes rank 0's."""
    gen = torch_generator(train.noise, train.seed)
    if plan.distributed and train.noise == "secure":
        gen.set_state(from_rank0(gen.get_state(), plan.device))
    return gen


def wrap_private(peft_model: nn.Module, optimizer: torch.optim.Optimizer, privacy: PrivacySpec, train: TrainSpec,
                 plan: RunPlan, noise_gen: torch.Generator | None):
    """Opacus's per-sample-gradient module and DP optimizer (their distributed forms under W > 1)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    secure = train.noise == "secure"                     # Opacus's sampling against floating-point attacks
    if not plan.distributed:
        net = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean")
        return net, DPOptimizer(optimizer, noise_multiplier=plan.sigma, max_grad_norm=privacy.max_grad_norm,
                                expected_batch_size=train.batch_size, loss_reduction="mean", generator=noise_gen,
                                secure_mode=secure)
    from opacus.distributed import (
        DifferentiallyPrivateDistributedDataParallel as DPDDP,
    )
    from opacus.optimizers import DistributedDPOptimizer

    # DPDDP broadcasts rank 0's weights; DistributedDPOptimizer adds the noise on rank 0 only, divides
    # each rank's (clipped sum [+ noise]) by expected_batch_size, all-reduces (SUM) and divides by W:
    # with expected_batch_size = B / W the update is (Σ clipped + N(0, σ²C²)) / B, as in one process.
    net = GradSampleModule(DPDDP(peft_model), batch_first=True, loss_reduction="mean")
    return net, DistributedDPOptimizer(optimizer, noise_multiplier=plan.sigma, max_grad_norm=privacy.max_grad_norm,
                                       expected_batch_size=train.batch_size / plan.world, loss_reduction="mean",
                                       generator=noise_gen, secure_mode=secure)


def resume(t: Trainer) -> None:
    """Continue from the run's checkpoint, if rank 0 has one: weights, optimizer, accountant, RNGs, step, log."""
    plan = t.plan
    state = read_checkpoint(plan.output_dir, plan.rank, plan.world, plan.device)
    if state is None:
        return
    if state["digest"] != plan.digest:
        raise PrunePrivError(f"{plan.checkpoint} belongs to a run with other settings; remove it or use another folder")
    with torch.no_grad():
        for name, value in state["lora"].items():
            t.params[name].copy_(value.to(plan.device))
    t.base_optimizer.load_state_dict(state["optimizer"])
    t.accountant.load_state_dict(state["accountant"])
    set_rng_state(state["rng"], t.sampler_gen, t.noise_gen)
    t.step, t.log = state["step"], state["log"]


def prepare_data(tokenizer, texts: list[str], t: Trainer) -> TrainingData:
    """The records and the remaining Poisson logical batches (length-sorted; this rank's share under W > 1)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    plan = t.plan
    dataset = TokenizedTexts(tokenizer, texts, t.train.max_length)
    batches = UniformWithReplacementSampler(num_samples=plan.n, sample_rate=plan.sample_rate,
                                            generator=t.sampler_gen, steps=plan.total_steps - t.step)
    batches = LengthSortedBatches(batches, [len(x) for x in dataset.items])
    if plan.distributed:
        batches = RankShare(batches, plan.rank, plan.world)
    collate = make_collate(dataset.pad_id)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                         generator=t.loader_gen, num_workers=0)
    return TrainingData(dataset, batches, collate, loader)


def private_loop(t: Trainer, loader: torch.utils.data.DataLoader, stop_after: int | None) -> None:
    """DP-SGD: each logical batch in physical batches; one noisy step per logical batch."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=t.train.physical_batch_size,
                            optimizer=t.optimizer) as physical:
        losses: list[torch.Tensor] = []
        logical_size = 0
        for batch in physical:
            logical_size += _private_backward(t, batch, losses)
            schedule(t)
            t.optimizer.step()
            t.optimizer.zero_grad()
            if not t.optimizer._is_last_step_skipped:
                finish_step(t, losses, logical_size)
                losses, logical_size = [], 0
                if t.stop_fraction is not None or (stop_after is not None and t.step >= stop_after):
                    break


def _private_backward(t: Trainer, batch: dict[str, torch.Tensor], losses: list[torch.Tensor]) -> int:
    """Per-sample gradients of one physical batch; returns its size (an empty share gets 0-row grad samples)."""
    device = t.plan.device
    batch = {k: v.to(device) for k, v in batch.items()}
    if batch["input_ids"].shape[0] == 0:
        for p in t.params.values():
            p.grad_sample = torch.zeros((0, *p.shape), device=device, dtype=p.dtype)
        return 0
    per_record = t.loss(t.net, batch)
    per_record.mean().backward()
    losses.append(per_record.detach().cpu())
    return batch["input_ids"].shape[0]


def plain_loop(t: Trainer, data: TrainingData, stop_after: int | None) -> None:
    """The non-private twin: the same kind of logical batches and steps, no noise; the batch gradient's
    norm is clipped at the run's C (ordinary clipping, not each record's), which bounds how far one
    unusual batch can push the adapter (an unclipped run once jumped from loss 3.86 to 6.77 in a step)."""
    size_cap = t.train.physical_batch_size
    for indices in data.batches:
        losses = []
        size = len(indices)
        for lo in range(0, size, size_cap):
            chunk = data.collate([data.dataset[i] for i in indices[lo:lo + size_cap]])
            chunk = {k: v.to(t.plan.device) for k, v in chunk.items()}
            per_record = t.loss(t.net, chunk)
            (per_record.sum() / t.train.batch_size).backward()   # same scale as DP-SGD's mean
            losses.append(per_record.detach().cpu())
        if size:
            torch.nn.utils.clip_grad_norm_(list(t.params.values()), t.privacy.max_grad_norm)
            if t.stop_rule is not None:
                t.previous = {k: v.detach().clone() for k, v in t.params.items()}
            schedule(t)
            t.optimizer.step()
        t.optimizer.zero_grad()
        finish_step(t, losses, size)
        if t.stop_fraction is not None or (stop_after is not None and t.step >= stop_after):
            break


def schedule(t: Trainer) -> None:
    """Set the learning rate of the step about to be taken (:func:`prunepriv.privacy.specs.learning_rate_at`);
    a function of the step count alone, so a resumed run follows the same schedule."""
    lr = learning_rate_at(t.train, t.step, t.plan.total_steps)
    for group in t.base_optimizer.param_groups:
        group["lr"] = lr


def finish_step(t: Trainer, losses: list[torch.Tensor], batch_size: int) -> None:
    """Count a logical step: the guard after the first, the log line, a checkpoint when due (rank 0)."""
    plan = t.plan
    t.step += 1
    if t.initial is not None:
        _check_lora_moved(t.initial, t.params)
        t.initial = None
    if plan.distributed:
        loss, batch_size = global_loss(losses, batch_size, plan.device)
    else:
        loss = float(torch.cat(losses).mean()) if losses else float("nan")
    eps = rdp_epsilon(t.accountant.history, plan.delta) if t.privacy.private else math.inf
    t.log.append({"step": t.step, "loss": loss, "batch_size": batch_size, "epsilon": eps,
                  "learning_rate": t.base_optimizer.param_groups[0]["lr"]})
    t.bar.update(1)
    t.bar.set_postfix(loss=f"{loss:.3f}", eps=f"{eps:.2f}")
    if t.stop_rule is not None:
        t.stop_fraction = check_rule(t.stop_rule, t.peft_model, t.params, t.previous)
        if t.stop_fraction is not None:
            return                                           # finished here: finish() writes the outputs
    if t.after_step is not None:
        t.after_step(t)
        return
    if plan.rank == 0 and (t.step % t.train.checkpoint_every == 0 or t.step == plan.total_steps):
        save_checkpoint(plan.checkpoint, {
            "digest": plan.digest, "step": t.step, "log": t.log,
            "lora": {k: v.detach().cpu() for k, v in t.params.items()},
            "optimizer": t.base_optimizer.state_dict(),
            "accountant": t.accountant.state_dict(), "rng": rng_state(*saved_generators(t)),
        })


def saved_generators(t: Trainer) -> tuple[torch.Generator | None, torch.Generator | None]:
    """The sampler and noise generators a checkpoint may hold: none under secure noise (a resumed
    secure run draws fresh secret ones, so no file ever holds what the guarantee rests on)."""
    return (t.sampler_gen, t.noise_gen) if t.train.noise == "seeded" else (None, None)


def finish(t: Trainer, seconds: float, resumed_from: int) -> TrainResult:
    """The run's result; a finished run's files written by rank 0 (a stopped one keeps its checkpoint)."""
    plan = t.plan
    if plan.distributed:
        seconds = float(from_rank0(seconds, plan.device))   # one number for the run, rank 0's
        check_ranks_agree(t.params, plan.device)
    if t.step < plan.total_steps and t.stop_fraction is None:    # stopped early on request
        if plan.distributed:
            barrier(plan.device)                             # rank 0's checkpoint is on disk for a resume
        return TrainResult(plan.output_dir, t.record(prv=False), t.log, seconds, resumed_from, t.peft_model,
                           plan.world)
    record = t.record(prv=True)
    if plan.rank == 0:
        write_outputs(t, record, seconds, resumed_from)
    if plan.distributed:
        barrier(plan.device)                                 # every rank returns once the files are written
    return TrainResult(plan.output_dir, record, t.log, seconds, resumed_from, t.peft_model, plan.world)


def write_outputs(t: Trainer, record: PrivacyRecord, seconds: float, resumed_from: int) -> None:
    """``adapter/`` (with its model card and ``privacy.json``, so the guarantee travels with the
    weights), ``train_log.csv``, ``privacy.json`` and ``run.json``; the checkpoint is removed."""
    out = t.plan.output_dir
    save_adapter(t.peft_model, out / "adapter", record, t.privacy.accountant)
    atomic_write_text(out / "train_log.csv", _csv(t.log))
    atomic_write_json(out / "privacy.json", asdict(record))
    atomic_write_json(out / "run.json", {"digest": t.plan.digest, "seconds": seconds,
                                         "resumed_from_step": resumed_from, "world_size": t.plan.world,
                                         "stop_fraction": t.stop_fraction, "log": t.log})
    t.plan.checkpoint.unlink(missing_ok=True)


def save_adapter(peft_model: nn.Module, adapter_dir: Path, record: PrivacyRecord, accountant: str) -> None:
    """peft ``save_pretrained`` with an absolute base path (loadable from any folder), the run's
    ``privacy.json`` and a model card stating base model and privacy record, every file readable
    as the umask allows."""
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = base_reference(config.base_model_name_or_path or "")
    peft_model.save_pretrained(adapter_dir)
    atomic_write_json(adapter_dir / "privacy.json", asdict(record))
    kept = getattr(peft_model.get_base_model().config, KEPT_LAYERS_KEY, None)
    write_adapter_card(adapter_dir, config.base_model_name_or_path, record, accountant, kept)
    share_like_umask(adapter_dir)                # safetensors writes its weights file 0600


def _check_lora_moved(initial: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> None:
    """The silent-failure guard: after the first step some LoRA weight must differ."""
    moved = [name for name, p in params.items() if not torch.equal(initial[name], p.detach())]
    if not moved:
        raise RuntimeError(
            "LoRA weights did not change after the first optimizer step: the optimizer is not updating "
            "the adapter (was the model moved to another device after LoRA/Opacus wrapped it?)")


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    return "\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]) + "\n"
