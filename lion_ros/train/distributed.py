"""Process-group setup and the DDP / FSDP specifics the training loop needs.

Under `torchrun` (WORLD_SIZE > 1) the process group is NCCL on CUDA and gloo on CPU. DDP
replicates the model; FSDP (for lion-4b / lion-12b) shards it with one FSDP unit per T5 block,
ViT layer and Q-Former layer, and `use_orig_params=True` because frozen and trainable
parameters share those units. Rank 0 logs and writes checkpoints; every rank writes its RNG.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import RunSection


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mode: str  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(run: RunSection) -> DistEnv:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if run.device == "auto":
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mode = run.distributed
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                timeout=datetime.timedelta(minutes=run.dist_timeout_minutes),
            )
        mode = "ddp" if mode == "none" else mode
    elif mode != "none":
        mode = "none"  # one process: nothing to shard or replicate
    return DistEnv(rank, world_size, local_rank, device, mode)


def wrap(module: nn.Module, run: RunSection, env: DistEnv) -> nn.Module:
    if env.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if env.mode == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from transformers.models.instructblip.modeling_instructblip import (
            InstructBlipEncoderLayer,
            InstructBlipQFormerLayer,
        )
        from transformers.models.t5.modeling_t5 import T5Block

        return FullyShardedDataParallel(
            module,
            auto_wrap_policy=ModuleWrapPolicy({T5Block, InstructBlipEncoderLayer, InstructBlipQFormerLayer}),
            use_orig_params=True,
            device_id=env.device if env.device.type == "cuda" else None,
        )
    return module


def _is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def clip_grad_norm(module: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm (across shards under FSDP), clipped to `max_norm` when > 0."""
    limit = max_norm if max_norm > 0 else math.inf
    if _is_fsdp(module):
        return module.clip_grad_norm_(limit)
    params = [p for p in module.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, limit)


@contextlib.contextmanager
def full_weights(module: nn.Module, env: DistEnv) -> Iterator[None]:
    """Inside, rank 0's model holds every full parameter (FSDP gathers them; otherwise a no-op)."""
    if _is_fsdp(module):
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(module, writeback=False, rank0_only=True, offload_to_cpu=True):
            yield
    else:
        yield


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv) -> dict:
    if _is_fsdp(module):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.optim_state_dict(module, optimizer)
    return optimizer.state_dict()


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, env: DistEnv) -> None:
    if _is_fsdp(module):
        from torch.distributed.fsdp import FullyShardedDataParallel

        state = FullyShardedDataParallel.optim_state_dict_to_load(module, optimizer, state)
    optimizer.load_state_dict(state)


def mean_over_ranks(stats: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average each value over the ranks that have it (NaN = no such samples on that rank)."""
    if not env.distributed:
        return stats
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    present = (~values.isnan()).to(torch.float64)
    packed = torch.cat([values.nan_to_num(0.0), present]).to(env.device)
    dist.all_reduce(packed)
    sums, counts = packed[: len(keys)].cpu(), packed[len(keys):].cpu()
    return {k: float(s / c) if c > 0 else float("nan") for k, s, c in zip(keys, sums, counts)}


def max_over_ranks(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    packed = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return float(packed.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
