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
  from the same seed and takes the same number of steps, with no clipping
  and no noise.
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
  rank 0 writes files. See :class:`RankShare`.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from prunepriv.errors import (
    DistributedConfigError,
    ModelError,
    PrivacyConfigError,
    PrunePrivError,
)
from prunepriv.lm.text import record_ids
from prunepriv.results import atomic_write_bytes, atomic_write_json, atomic_write_text


@dataclass
class LoRASpec:
    """peft LoRA settings."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class PrivacySpec:
    """DP-SGD settings; ``epsilon = inf`` is the non-private twin."""

    epsilon: float = math.inf
    delta: float | None = None          # default: 1 / (10 N)
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None  # overrides epsilon when given
    accountant: str = "rdp"             # calibrates σ; RDP and PRV are both reported

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None or math.isfinite(self.epsilon)


@dataclass
class TrainSpec:
    """Optimisation settings shared by private and non-private runs."""

    epochs: float = 1.0
    learning_rate: float = 2e-3
    batch_size: int = 32                # expected logical (Poisson) batch size
    physical_batch_size: int = 8
    max_length: int = 128
    checkpoint_every: int = 10
    seed: int = 0


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
    unit: str = "one training record"
    note: str = ("a canary inserted k times is k records: it is covered only by group "
                 "privacy (roughly k·ε), not by ε")


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
    from opacus.accountants import PRVAccountant, RDPAccountant

    if steps == 0:
        return 0.0
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


# --------------------------------------------------------------------------
# model and data

def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of the linear layers LoRA could target (e.g. q_proj, c_attn)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "embed_out"):
                names.add(leaf)
    return sorted(names)


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Raise ModelError naming the model's linear layers if a target is missing."""
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ModelError(f"LoRA target modules {missing} not in the model; it has: {', '.join(available)}")


def add_lora(model: nn.Module, spec: LoRASpec):
    """Wrap ``model`` with peft LoRA; only LoRA parameters stay trainable."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, spec.target_modules)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class TokenizedTexts(torch.utils.data.Dataset):
    """Records as ``[start] + tokens + [eos]`` (:func:`prunepriv.lm.text.record_ids`), truncated to ``max_length``."""

    def __init__(self, tokenizer, texts: list[str], max_length: int) -> None:

        self.items = [torch.tensor(ids, dtype=torch.long) for ids in record_ids(tokenizer, texts, max_length)]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


class RankShare:
    """This rank's share of each logical batch: every ``world``-th record from ``rank`` on.

    Every rank iterates the same length-sorted global Poisson batches (its
    sampler generator is seeded like every other rank's), so the shares of
    the ranks partition exactly the logical batch a one-process run draws.
    An empty share is still yielded: each rank takes one optimizer step —
    one all-reduce — per logical batch, so no rank waits for another.
    (Opacus's ``DistributedUniformWithReplacementSampler`` skips a rank's
    empty batches, which would leave the ranks with different step counts.)
    """

    def __init__(self, batches, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for indices in self.batches:
            yield indices[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)


class LengthSortedBatches:
    """Logical batches of ``sampler`` with their indices ordered by record length.

    Which records form a logical batch (the Poisson draw the accountant
    assumes) is unchanged; only their order inside the batch is, so that the
    physical batches split from it in order pad short records (canaries)
    with short ones instead of with whole notes.
    """

    def __init__(self, sampler, lengths: list[int]) -> None:
        self.sampler, self.lengths = sampler, lengths

    def __iter__(self):
        for indices in self.sampler:
            yield sorted(indices, key=lambda i: (self.lengths[i], i))

    def __len__(self) -> int:
        return len(self.sampler)


def make_collate(pad_id: int) -> Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]:
    """Right-pad a list of sequences; an empty Poisson batch gives 0-row tensors."""
    def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if not items:
            empty = torch.zeros(0, 1, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty}
        length = max(len(x) for x in items)
        ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, x in enumerate(items):
            ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask}
    return collate


def sequence_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-record mean next-token NLL, shape (B,)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["attention_mask"][:, 1:].to(logits.dtype)
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1.0)


# --------------------------------------------------------------------------
# training

@dataclass
class TrainResult:
    """Outputs of one fine-tuning run."""

    output_dir: Path
    privacy: PrivacyRecord
    log: list[dict[str, Any]]
    seconds: float
    resumed_from_step: int
    model: Any = None                   # the trained PeftModel (wraps the caller's model in place)
    world_size: int = 1                 # processes that trained it (torch.distributed), 1 without

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"


def _rng_state(sampler_gen: torch.Generator, noise_gen: torch.Generator | None) -> dict[str, Any]:
    return {
        "sampler": sampler_gen.get_state(), "noise": noise_gen.get_state() if noise_gen is not None else None,
        "torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any], sampler_gen: torch.Generator, noise_gen: torch.Generator | None) -> None:
    sampler_gen.set_state(state["sampler"])
    if noise_gen is not None and state["noise"] is not None:
        noise_gen.set_state(state["noise"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised ``torch.distributed`` group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device(device: torch.device) -> torch.device:
    """Where small tensors for collectives live: the rank's GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _from_rank0(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (what rank 0 read from disk: no shared folder needed)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_collective_device(device))
    return box[0]


def _barrier(device: torch.device) -> None:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def _global_loss(losses: list[torch.Tensor], batch_size: int, device: torch.device) -> tuple[float, int]:
    """Mean per-record loss and size of the whole logical batch, summed over the ranks."""
    import torch.distributed as dist

    local = torch.cat(losses).double().sum() if losses else torch.zeros((), dtype=torch.float64)
    total = torch.stack([local, torch.tensor(float(batch_size), dtype=torch.float64)]).to(_collective_device(device))
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    loss_sum, count = float(total[0]), int(round(float(total[1])))
    return (loss_sum / count if count else float("nan")), count


def _check_ranks_agree(params: dict[str, nn.Parameter], device: torch.device) -> None:
    """Every rank must end with rank 0's LoRA weights (the all-reduce keeps them in step)."""
    import torch.distributed as dist

    mine = torch.cat([p.detach().reshape(-1).float() for p in params.values()]).to(_collective_device(device))
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    gap = (mine - reference).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    if float(gap) > 1e-5 * max(1.0, scale):
        raise RuntimeError(f"LoRA weights differ across ranks after training (max |difference| {float(gap):.3g}); "
                           "the processes did not apply the same updates")


def _lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def run_digest(lora: LoRASpec, privacy: PrivacySpec, train: TrainSpec, n_train: int, extra: str = "") -> str:
    """Fingerprint of a run's settings; a checkpoint only resumes the same run."""
    blob = json.dumps([asdict(lora), {**asdict(privacy), "epsilon": str(privacy.epsilon)}, asdict(train),
                       n_train, extra], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


RECORD_FORMAT = "start+text+eos;length-sorted-physical-batches"   # see prunepriv.lm.text.record_ids; part of every run's digest


def _data_fingerprint(texts: list[str], model: nn.Module) -> str:
    """The training texts, their record format and the base model's kept layers, hashed."""
    digest = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
    return f"{RECORD_FORMAT}|{digest}|{getattr(model.config, 'prunepriv_kept_layers', '')}"


def finetune(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    output_dir: str | Path,
    lora: LoRASpec = LoRASpec(),
    privacy: PrivacySpec = PrivacySpec(),
    train: TrainSpec = TrainSpec(),
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune ``model`` (already on its device) with LoRA, privately or not.

    Writes ``output_dir/adapter`` (peft ``save_pretrained``), ``train_log.csv``,
    ``privacy.json`` and, while running, ``checkpoint.pt``. A run whose
    ``checkpoint.pt`` exists resumes from it. ``stop_after`` ends the call
    after that many logical steps in total (used to test resumption).

    Inside an initialised ``torch.distributed`` group of world size W > 1
    (``torchrun``), call it on every rank with the model on that rank's
    device: DP-SGD runs across the W processes with the accounting of one
    process (same σ, q and steps, so the same ε); only rank 0 reads and
    writes ``output_dir`` (what it reads is broadcast), every rank returns
    the same weights and record. A non-private run (``epsilon = inf``)
    under W > 1 is refused with :class:`DistributedConfigError`.
    """
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    n = len(texts)
    rank, world = distributed_rank_world()
    distributed = world > 1
    if n < train.batch_size:
        raise PrunePrivError(f"training set has {n} records, fewer than one batch ({train.batch_size})")
    delta = check_privacy(privacy, n)
    check_distributed(privacy, world)
    sample_rate = train.batch_size / n
    total_steps = max(1, math.ceil(train.epochs / sample_rate))
    sigma = 0.0
    if privacy.private:
        sigma = privacy.noise_multiplier or get_noise_multiplier(
            target_epsilon=privacy.epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=total_steps, accountant=privacy.accountant)
    extra = _data_fingerprint(texts, model)
    if distributed:                                          # one-process digests stay as they were
        extra += f"|world_size={world}"
    digest = run_digest(lora, privacy, train, n, extra=extra)

    device = next(model.parameters()).device
    if distributed:
        import torch.distributed as dist

        if dist.get_backend() == "nccl" and device.type != "cuda":
            raise DistributedConfigError(f"the NCCL backend needs the model on this rank's GPU, it is on {device}")
    done = _finished_run(output_dir, digest) if rank == 0 else None
    if distributed:
        done = _from_rank0(done, device)
    torch.manual_seed(train.seed)
    random.seed(train.seed)
    np.random.seed(train.seed)
    peft_model = add_lora(model, lora)                       # model is already on its device
    peft_model.train()
    params = _lora_parameters(peft_model)
    if done is not None:                                     # finished earlier with these settings
        if distributed:
            _load_lora_from_rank0(output_dir / "adapter" / "adapter_model.safetensors", peft_model, rank, device)
        else:
            _load_lora(params, output_dir / "adapter" / "adapter_model.safetensors", peft_model)
        done.model = peft_model
        return done
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(params.values(), lr=train.learning_rate, weight_decay=0.0)
    sampler_gen = torch.Generator().manual_seed(train.seed)
    loader_gen = torch.Generator().manual_seed(train.seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(train.seed + 2) if privacy.private else None
    accountant = RDPAccountant()
    net: nn.Module = peft_model
    if privacy.private and distributed:
        from opacus.distributed import (
            DifferentiallyPrivateDistributedDataParallel as DPDDP,
        )
        from opacus.optimizers import DistributedDPOptimizer

        # DPDDP broadcasts rank 0's weights; DistributedDPOptimizer adds the noise on rank 0 only, divides
        # each rank's (clipped sum [+ noise]) by expected_batch_size, all-reduces (SUM) and divides by W:
        # with expected_batch_size = B / W the update is (Σ clipped + N(0, σ²C²)) / B, as in one process.
        net = GradSampleModule(DPDDP(peft_model), batch_first=True, loss_reduction="mean")
        optimizer = DistributedDPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=privacy.max_grad_norm,
                                           expected_batch_size=train.batch_size / world, loss_reduction="mean",
                                           generator=noise_gen)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    elif privacy.private:
        net = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean")
        optimizer = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=privacy.max_grad_norm,
                                expected_batch_size=train.batch_size, loss_reduction="mean", generator=noise_gen)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))

    step, log = 0, []
    checkpoint = output_dir / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False) if rank == 0 and checkpoint.is_file() else None
    if distributed:                                          # rank 0 reads, every rank resumes from it
        state = _from_rank0(state, device)
    if state is not None:
        if state["digest"] != digest:
            raise PrunePrivError(f"{checkpoint} belongs to a run with other settings; remove it or use another folder")
        with torch.no_grad():
            for name, value in state["lora"].items():
                params[name].copy_(value.to(device))
        (optimizer.original_optimizer if privacy.private else optimizer).load_state_dict(state["optimizer"])
        accountant.load_state_dict(state["accountant"])
        _set_rng_state(state["rng"], sampler_gen, noise_gen)
        step, log = state["step"], state["log"]
    resumed_from = step

    dataset = TokenizedTexts(tokenizer, texts, train.max_length)
    batch_sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=sample_rate, generator=sampler_gen,
                                                  steps=total_steps - step)
    batch_sampler = LengthSortedBatches(batch_sampler, [len(x) for x in dataset.items])
    if distributed:
        batch_sampler = RankShare(batch_sampler, rank, world)
    collate = make_collate(dataset.pad_id)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                                         generator=loader_gen, num_workers=0)
    initial = {k: v.detach().clone() for k, v in params.items()} if step == 0 else None
    start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=f"finetune ε={_eps_label(privacy)}",
               disable=not progress or rank != 0, leave=False)

    def save_checkpoint() -> None:
        state = {
            "digest": digest, "step": step, "log": log,
            "lora": {k: v.detach().cpu() for k, v in params.items()},
            "optimizer": (optimizer.original_optimizer if privacy.private else optimizer).state_dict(),
            "accountant": accountant.state_dict(), "rng": _rng_state(sampler_gen, noise_gen),
        }
        import io

        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(checkpoint, buffer.getvalue())

    def finish_step(losses: list[torch.Tensor], batch_size: int) -> None:
        nonlocal step, initial
        step += 1
        if initial is not None:
            _check_lora_moved(initial, params)
            initial = None
        if distributed:
            loss, batch_size = _global_loss(losses, batch_size, device)
        else:
            loss = float(torch.cat(losses).mean()) if losses else float("nan")
        eps = (float(accountant.get_epsilon(delta)) if privacy.private else math.inf)
        log.append({"step": step, "loss": loss, "batch_size": batch_size, "epsilon": eps})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", eps=f"{eps:.2f}")
        if rank == 0 and (step % train.checkpoint_every == 0 or step == total_steps):
            save_checkpoint()

    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
    if privacy.private:
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=train.physical_batch_size,
                                optimizer=optimizer) as physical:
            losses: list[torch.Tensor] = []
            logical_size = 0
            for batch in physical:
                batch = {k: v.to(device) for k, v in batch.items()}
                if batch["input_ids"].shape[0] == 0:
                    for p in params.values():
                        p.grad_sample = torch.zeros((0, *p.shape), device=device, dtype=p.dtype)
                else:
                    per_record = sequence_nll(net, batch)
                    per_record.mean().backward()
                    losses.append(per_record.detach().cpu())
                    logical_size += batch["input_ids"].shape[0]
                optimizer.step()
                optimizer.zero_grad()
                if not optimizer._is_last_step_skipped:
                    finish_step(losses, logical_size)
                    losses, logical_size = [], 0
                    if stop_after is not None and step >= stop_after:
                        break
    else:
        for indices in batch_sampler:
            losses = []
            size = len(indices)
            for lo in range(0, size, train.physical_batch_size):
                chunk = collate([dataset[i] for i in indices[lo:lo + train.physical_batch_size]])
                chunk = {k: v.to(device) for k, v in chunk.items()}
                per_record = sequence_nll(net, chunk)
                (per_record.sum() / train.batch_size).backward()   # same scale as DP-SGD's mean
                losses.append(per_record.detach().cpu())
            if size:
                optimizer.step()
            optimizer.zero_grad()
            finish_step(losses, size)
            if stop_after is not None and step >= stop_after:
                break
    bar.close()
    seconds = time.perf_counter() - start
    if distributed:
        seconds = float(_from_rank0(seconds, device))        # one number for the run, rank 0's
        _check_ranks_agree(params, device)
    if step < total_steps:                                   # stopped early on request
        if distributed:
            _barrier(device)                                 # rank 0's checkpoint is on disk for a resume
        return TrainResult(output_dir, _record(privacy, sigma, sample_rate, step, delta, n, prv=False),
                           log, seconds, resumed_from, peft_model, world)
    record = _record(privacy, sigma, sample_rate, step, delta, n, prv=True)
    if rank == 0:
        peft_model.save_pretrained(output_dir / "adapter")
        atomic_write_text(output_dir / "train_log.csv", _csv(log))
        atomic_write_json(output_dir / "privacy.json", asdict(record))
        atomic_write_json(output_dir / "run.json", {"digest": digest, "seconds": seconds,
                                                    "resumed_from_step": resumed_from, "world_size": world,
                                                    "log": log})
        checkpoint.unlink(missing_ok=True)
    if distributed:
        _barrier(device)                                     # every rank returns once the files are written
    return TrainResult(output_dir, record, log, seconds, resumed_from, peft_model, world)


def _finished_run(output_dir: Path, digest: str) -> TrainResult | None:
    """A completed run in ``output_dir`` with the same settings, if any."""
    run_file, privacy_file = output_dir / "run.json", output_dir / "privacy.json"
    if not (run_file.is_file() and privacy_file.is_file()):
        return None
    run = json.loads(run_file.read_text())
    if run.get("digest") != digest:
        return None
    record = PrivacyRecord(**json.loads(privacy_file.read_text()))
    return TrainResult(output_dir, record, run["log"], run["seconds"], run["resumed_from_step"],
                       world_size=run.get("world_size", 1))


def _load_lora(params: dict[str, nn.Parameter], path: Path, peft_model) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(peft_model, load_file(path))


def _load_lora_from_rank0(path: Path, peft_model, rank: int, device: torch.device) -> None:
    """Rank 0 reads the saved adapter, every rank loads its tensors."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(peft_model, _from_rank0(load_file(path) if rank == 0 else None, device))


def check_adapter_dir(adapter_dir: Path) -> Path:
    """The adapter's weights file; a folder without a peft adapter is a ModelError."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not (Path(adapter_dir) / "adapter_config.json").is_file() or not weights.is_file():
        raise ModelError(f"no LoRA adapter in {adapter_dir} (expected adapter_config.json and adapter_model.safetensors)")
    return weights


def load_adapter(model: nn.Module, adapter_dir: str | Path):
    """Attach a saved LoRA adapter to ``model``, refusing one made for another model.

    Every adapter tensor must have a matching LoRA parameter of the same
    shape (a different architecture or layer count is named in the error).
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    weights = check_adapter_dir(adapter_dir)
    config = LoraConfig.from_pretrained(adapter_dir)
    available = linear_module_names(model)
    missing = sorted(set(config.target_modules) - set(available))
    if missing:
        raise ModelError(f"adapter {adapter_dir} targets {missing}, which the base model lacks")
    saved = load_file(weights)
    probe = get_peft_model_state_dict(get_peft_model(_shape_twin(model), config))
    wrong = [k for k, v in saved.items() if k not in probe or probe[k].shape != v.shape]
    if wrong or len(saved) != len(probe):
        raise ModelError(f"adapter {adapter_dir} does not match the base model "
                         f"({len(saved)} adapter tensors, {len(probe)} expected; first mismatch: "
                         f"{(wrong or sorted(set(probe) - set(saved)))[:1]})")
    return PeftModel.from_pretrained(model, adapter_dir)


def _shape_twin(model: nn.Module) -> nn.Module:
    """A weightless copy of ``model`` (meta device) to compute the adapter's expected shapes."""
    import copy

    return meta_model(copy.deepcopy(model.config))


def meta_model(config) -> nn.Module:
    """The architecture of ``config`` without weights (meta device): cheap structural checks."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def merge_and_save(peft_model, tokenizer, output_dir: str | Path) -> Path:
    """Merge LoRA into the base weights and save a plain Hugging Face model."""
    merged = peft_model.merge_and_unload()
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def _record(privacy: PrivacySpec, sigma: float, q: float, steps: int, delta: float, n: int,
            prv: bool) -> PrivacyRecord:
    if not privacy.private:
        return PrivacyRecord(False, 0.0, q, steps, delta, math.inf, math.inf, None, n)
    return PrivacyRecord(True, sigma, q, steps, delta, epsilon_for(sigma, q, steps, delta, "rdp"),
                         epsilon_for(sigma, q, steps, delta, "prv") if prv else None, privacy.max_grad_norm, n)


def _check_lora_moved(initial: dict[str, torch.Tensor], params: dict[str, nn.Parameter]) -> None:
    """The silent-failure guard: after the first step some LoRA weight must differ."""
    moved = [name for name, p in params.items() if not torch.equal(initial[name], p.detach())]
    if not moved:
        raise RuntimeError(
            "LoRA weights did not change after the first optimizer step: the optimizer is not updating "
            "the adapter (was the model moved to another device after LoRA/Opacus wrapped it?)")


def _eps_label(privacy: PrivacySpec) -> str:
    if privacy.noise_multiplier is not None:
        return f"σ={privacy.noise_multiplier:g}"
    return "inf" if not math.isfinite(privacy.epsilon) else f"{privacy.epsilon:g}"


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    return "\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]) + "\n"
