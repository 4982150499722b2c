"""torchrun integration: process group from RANK / WORLD_SIZE / LOCAL_RANK, and reductions.

CUDA: NCCL, one GPU per process (LOCAL_RANK). CPU: gloo. A plain `python train.py` is a world of one.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the torchrun process group if there is one; pick this process's device."""
    world_size, rank, local_rank = _launch_environment()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if rank == 0 and "TORCHELASTIC_RUN_ID" not in os.environ:
            print(
                f"waiting for {world_size} processes at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                "(WORLD_SIZE and RANK come from the environment, not from torchrun)",
                file=sys.stderr,
                flush=True,
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, device)


class LaunchError(UserError):
    """Distributed variables in the environment that no launcher set."""


def _launch_environment() -> tuple[int, int, int]:
    """(WORLD_SIZE, RANK, LOCAL_RANK), checked: WORLD_SIZE > 1 needs what a launcher (torchrun) sets."""
    env = os.environ
    try:
        world_size, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise LaunchError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers; launch with torchrun or unset them"
        ) from None
    if world_size > 1:
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise LaunchError(
                f"WORLD_SIZE={world_size} is set but {', '.join(missing)} not: no launcher started this process; "
                "run it with torchrun, or `unset WORLD_SIZE RANK` for a single process"
            )
        if not 0 <= rank < world_size:
            raise LaunchError(f"RANK={rank} does not lie in 0..WORLD_SIZE-1 ({world_size - 1}); check the launcher")
    return world_size, rank, local_rank


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
