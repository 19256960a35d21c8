"""``prunepriv finetune``: LoRA fine-tuning of a user's model on a user's text, under DP-SGD or not,
in one process or across the processes of ``torchrun``."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from prunepriv.config import Profile
from prunepriv.data import corpus_for, load_records
from prunepriv.errors import ModelError, PrunePrivError
from prunepriv.lm.lora import check_lora_targets, merge_and_save, meta_model
from prunepriv.lm.models import STORAGE_DTYPES, load_model, model_num_layers, resolve_model_path, source_dtype
from prunepriv.privacy.specs import (
    check_distributed,
    check_privacy,
    finetune_specs,
    nonprivate_lora,
    nonprivate_train,
)
from prunepriv.privacy.train import TrainResult, finetune
from prunepriv.results import check_writable


def training_texts(profile: Profile) -> list[str]:
    """The records to train on: the synthetic corpus's training split, or every record of the user's file."""
    if profile.data.source == "synthetic":
        return corpus_for(profile).texts("train")
    return [r.text for r in load_records(profile.data.source, profile.data.text_field)]


def specs(profile: Profile, n_train: int, noise_multiplier: float | None = None):
    """LoRA, privacy and training specs of the profile's ``finetune`` section for its one ε
    (or a fixed noise multiplier), checked against ``n_train`` records before any weights load."""
    lora, privacy, train = finetune_specs(profile)
    (epsilon,) = profile.finetune.epsilons
    spec = privacy[epsilon]
    if not spec.private:                                     # the profile's non-private recipe, as in the sweep
        lora, train = nonprivate_lora(profile, lora), nonprivate_train(profile, train)
    if noise_multiplier is not None:
        spec = replace(spec, noise_multiplier=noise_multiplier)
    if n_train < train.batch_size:
        raise PrunePrivError(f"training set has {n_train} records, fewer than one batch ({train.batch_size})")
    check_privacy(spec, n_train)
    check_distributed(spec, int(os.environ.get("WORLD_SIZE", "1")))     # WORLD_SIZE is set by torchrun
    return lora, spec, train


def run(profile: Profile, output: str | Path, noise_multiplier: float | None = None,
        merge: bool = False) -> TrainResult | None:
    """Fine-tune ``profile.model`` on the profile's data into ``output``; ``None`` on ranks other than 0."""
    from transformers import AutoConfig

    check_writable(output)
    texts = training_texts(profile)
    lora, privacy, train = specs(profile, len(texts), noise_multiplier)

    def load(device: str):
        model_num_layers(profile.model)
        check_lora_targets(meta_model(AutoConfig.from_pretrained(resolve_model_path(profile.model))),
                           lora.target_modules)
        return load_model(profile.model, device=device, precision=profile.precision)

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _train(load(profile.device), texts, Path(output), lora, privacy, train, merge, rank=0,
                      model_name=profile.model)
    import torch.distributed as dist

    device, created = join_process_group(profile.device)
    try:
        loaded = rank0_first(lambda: load(device))
        return _train(loaded, texts, Path(output), lora, privacy, train, merge, rank=dist.get_rank(),
                      model_name=profile.model)
    finally:
        if created:
            dist.destroy_process_group()


def _train(loaded, texts, output: Path, lora, privacy, train, merge: bool, rank: int,
           model_name: str = "embedded") -> TrainResult | None:
    model, tokenizer = loaded
    result = finetune(model, tokenizer, texts, output, lora, privacy, train, progress=rank == 0)
    if rank != 0:                                            # rank 0 saves and reports
        return None
    if merge:                                                # merged into the fp32 weights, stored as the source is
        source = load_model(model_name, device="cpu", precision="fp32")[0]
        merge_and_save(result.model, tokenizer, output / "merged", source, STORAGE_DTYPES[source_dtype(model_name)])
    return result


def join_process_group(device_arg: str) -> tuple[str, bool]:
    """Join the ``torchrun`` process group (env://): NCCL on ``cuda:LOCAL_RANK``, else gloo on the CPU.

    Returns this rank's device and whether the group was created here (an
    already initialised group is used as it is and left for its owner to end).
    """
    import torch
    import torch.distributed as dist

    if device_arg not in ("auto", "cpu", "cuda"):
        raise PrunePrivError(f"under torchrun --device must be auto, cuda or cpu (each process takes cuda:LOCAL_RANK), "
                             f"got {device_arg!r}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available")
    if device_arg != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise PrunePrivError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                                 "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    if dist.is_initialized():
        return device, False
    dist.init_process_group(backend=backend)
    return device, True


def rank0_first(fn):
    """``fn()`` on rank 0, then on the other ranks: a model cache or download is filled once.

    A failure on rank 0 is raised on every rank (the others do not wait forever).
    """
    import torch.distributed as dist

    rank, result, failure = dist.get_rank(), None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as exc:                              # noqa: BLE001 - re-raised below on every rank
            failure = exc
    box = [None if failure is None else (isinstance(failure, (PrunePrivError, FileNotFoundError)), str(failure))]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        user_error, message = box[0]
        raise (PrunePrivError if user_error else RuntimeError)(message)
    return fn() if rank != 0 else result
