"""The ``torch.distributed`` collectives of a fine-tuning run spread over W processes.

Rank 0 reads and writes files; what it reads reaches the other ranks through
:func:`from_rank0` (no shared folder needed). Small tensors for collectives
live on the rank's GPU under NCCL and on the CPU under gloo.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from prunepriv.errors import DistributedConfigError


def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised ``torch.distributed`` group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_backend_device(device: torch.device) -> None:
    """NCCL needs the model on this rank's GPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise DistributedConfigError(f"the NCCL backend needs the model on this rank's GPU, it is on {device}")


def collective_device(device: torch.device) -> torch.device:
    """Where small tensors for collectives live: the rank's GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def from_rank0(obj: Any, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (what rank 0 read from disk: no shared folder needed)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=collective_device(device))
    return box[0]


def read_on_rank0(read: Callable[[], Any], rank: int, world: int, device: torch.device) -> Any:
    """``read()`` on rank 0 (``None`` on the others), then rank 0's value on every rank when ``world`` > 1."""
    value = read() if rank == 0 else None
    return from_rank0(value, device) if world > 1 else value


def barrier(device: torch.device) -> None:
    """Wait for every rank."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def global_loss(losses: list[torch.Tensor], batch_size: int, device: torch.device) -> tuple[float, int]:
    """Mean per-record loss and size of the whole logical batch, summed over the ranks."""
    import torch.distributed as dist

    local = torch.cat(losses).double().sum() if losses else torch.zeros((), dtype=torch.float64)
    total = torch.stack([local, torch.tensor(float(batch_size), dtype=torch.float64)]).to(collective_device(device))
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    loss_sum, count = float(total[0]), int(round(float(total[1])))
    return (loss_sum / count if count else float("nan")), count


def check_ranks_agree(params: dict[str, nn.Parameter], device: torch.device) -> None:
    """Every rank must end with rank 0's LoRA weights (the all-reduce keeps them in step)."""
    import torch.distributed as dist

    mine = torch.cat([p.detach().reshape(-1).float() for p in params.values()]).to(collective_device(device))
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    gap = (mine - reference).abs().max().reshape(1)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    if float(gap) > 1e-5 * max(1.0, scale):
        raise RuntimeError(f"LoRA weights differ across ranks after training (max |difference| {float(gap):.3g}); "
                           "the processes did not apply the same updates")
