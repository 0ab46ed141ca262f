"""Exact-resume data order: a seeded, rank-sharded, restartable sampler and per-sample seeded augmentation."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["EpochSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[0])


class SeededDataset(Dataset):
    """Runs ``dataset[i]`` with python/numpy/torch RNGs seeded from ``(seed, epoch, i)``.

    Augmentations then depend neither on worker count, rank nor on where a run was resumed. In the
    main process torch's CPU RNG state is restored afterwards, so model RNG (dropout) is untouched;
    python's and numpy's global RNGs are left reseeded (deterministically).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        seed = sample_seed(self.seed, self.epoch, index)
        saved = torch.get_rng_state() if get_worker_info() is None else None
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also touch CUDA (slow)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                torch.set_rng_state(saved)


class EpochSampler(Sampler[int]):
    """Seeded shuffle per epoch, sharded over ranks like ``DistributedSampler``, able to start at a batch.

    Training pads the index list so every rank gets the same number of samples; evaluation
    (``pad=False``) gives each sample to exactly one rank.
    """

    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.shuffle, self.seed = int(num_samples), bool(shuffle), int(seed)
        self.rank, self.world_size, self.pad = int(rank), int(world_size), bool(pad)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_index`` samples of this rank (resume)."""
        self.epoch, self.start = int(epoch), int(start_index)

    def _rank_indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        if self.pad:
            total = math.ceil(self.n / self.world_size) * self.world_size
            pad = total - self.n
            order += order[:pad] if pad <= self.n else (order * math.ceil(total / self.n))[self.n : total]
        return order[self.rank :: self.world_size]

    def samples_per_epoch(self) -> int:
        """Samples this rank sees in a full epoch."""
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.samples_per_epoch() - self.start)
