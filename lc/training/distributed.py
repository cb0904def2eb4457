"""Process-group setup and the reproducible, resumable sample order of training.

One process per device. Under torchrun (RANK and WORLD_SIZE in the environment, WORLD_SIZE > 1)
`setup_distributed` joins the process group: NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU.

The sample order and the random augmentation of every sample are functions of (seed, epoch, index)
only: `EpochSampler` yields (index, epoch) pairs from a permutation seeded by seed + epoch and
`SeededSamples` draws each sample's augmentation from a generator seeded by (seed, epoch, index).
So a run resumed at any iteration sees exactly the batches an uninterrupted run would, whatever the
number of loader workers, and data-parallel ranks read disjoint shards of the same permutation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from lc.device import resolve_device

__all__ = ["DistContext", "EpochSampler", "SeededSamples", "infinite_batches",
           "setup_distributed", "teardown_distributed"]


@dataclass
class DistContext:
    """Where this process runs: rank among world_size processes, on `device`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when setup_distributed created the process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if world_size <= 1:
        return DistContext(device=base)
    if "RANK" not in os.environ:
        raise ValueError("WORLD_SIZE > 1 but RANK is not set; launch multi-process training with torchrun")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if base.type == "cuda":
        base = torch.device("cuda", local_rank)
        torch.cuda.set_device(base)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
        owns = True
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=base, owns_group=owns)


def teardown_distributed(ctx: DistContext, wait: bool = True) -> None:
    """Leave the process group if `setup_distributed` created it; wait: barrier first (clean exit)."""
    if ctx.owns_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


class EpochSampler(Sampler):
    """This rank's (index, epoch) pairs of a seeded per-epoch permutation, whole global batches only.

    `set_epoch(epoch, skip_batches)` picks the epoch and how many of this rank's batches to skip
    (used on resume: nothing is loaded for skipped batches).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, int(seed)
        self.num_replicas, self.rank = num_replicas, rank
        self.batches_per_epoch = num_samples // (batch_size * num_replicas)
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {num_samples} images, fewer than one global batch of "
                             f"{batch_size * num_replicas} (train.batch_size); prepare more data or lower it")
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        used = self.batches_per_epoch * self.batch_size * self.num_replicas
        mine = order[self.rank:used:self.num_replicas]
        return iter([(index, self.epoch) for index in mine[self.skip_batches * self.batch_size:]])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size


class SeededSamples(Dataset):
    """Wraps a training set: item (index, epoch) -> {"image", "label"}, augmented from its own seed."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            item = self.dataset[index]
        return {"image": item["image"], "label": item["label"]}


def infinite_batches(loader: DataLoader, sampler: EpochSampler, start_iteration: int) -> Iterator[dict]:
    """Batches over epochs without end, starting where iteration `start_iteration` of a run would."""
    epoch, skip = divmod(start_iteration, sampler.batches_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip)
        yield from loader
        epoch, skip = epoch + 1, 0
