"""Data-parallel training across processes with PyTorch DDP (gloo on CPU, NCCL on GPU).

Launched by ``torchrun --nproc-per-node W -m ppl_vae fit ... --distributed``. Every rank
builds the same program (DDP broadcasts rank 0's weights), draws the same permutation of
the training rows each epoch and takes its shard of every global batch. With
``scale = N·W / B`` on each rank's loss, DDP's gradient average is exactly the gradient of
the single-process minibatch estimate on the union batch,

.. math::

    \\frac1W \\sum_r \\nabla \\frac{N W}{B} \\sum_{i \\in r} \\ell_i = \\frac{N}{B} \\sum_{i \\in B} \\nabla \\ell_i,

so the per-datapoint ELBO keeps its meaning. Rank 0 alone writes outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError

__all__ = ["ProgramLoss", "Cluster", "init_cluster", "SINGLE"]


class ProgramLoss(nn.Module):
    """The objective of a program as a module, so DDP can hook its parameters' gradients."""

    def __init__(self, program: nn.Module, objective):
        super().__init__()
        self.program = program
        self.objective = objective

    def forward(self, x: torch.Tensor, scale: float, beta: float, **inputs) -> torch.Tensor:
        return self.objective(self.program.model, self.program.guide, x, scale=scale, beta=beta, **inputs)


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of row indices."""
        return idx.tensor_split(self.world)[self.rank] if self.world > 1 else idx

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t)

    def wrap(self, loss: ProgramLoss, device: torch.device) -> nn.Module:
        if self.world == 1:
            return loss
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(loss, device_ids=ids)


SINGLE = Cluster()


def init_cluster(device: torch.device) -> Cluster:
    """Join the process group that torchrun describes in the environment."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UserError("--distributed must be launched by torchrun (RANK and WORLD_SIZE are not set)")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return Cluster(dist.get_rank(), dist.get_world_size())
