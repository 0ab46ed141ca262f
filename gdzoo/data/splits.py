"""Seeded, reproducible index splits: held-out validation sets and training subsets (Table 1's 1000, 5000, …)."""

from __future__ import annotations

import torch

__all__ = ["resolve_count", "seeded_permutation", "split_indices"]


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on ``seed`` (same on every machine and rank)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=generator)


def resolve_count(value: int | float | None, n: int, what: str) -> int:
    """``value`` as a count out of ``n``: an int is a count, a float in (0, 1) a fraction, None is 0."""
    if value is None:
        return 0
    if isinstance(value, float) and not value.is_integer():
        if not 0.0 < value < 1.0:
            raise ValueError(f"{what} as a fraction must be in (0, 1), got {value}")
        return max(1, int(round(value * n)))
    count = int(value)
    if not 0 <= count <= n:
        raise ValueError(f"{what} must be between 0 and {n} (the number of available samples), got {count}")
    return count


def split_indices(
    n: int, val_size: int | float | None = 0, subset: int | float | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices: ``val_size`` held out first, then a seeded ``subset`` of the rest.

    The validation split does not depend on ``subset``, so runs on 1000 or 5000 training samples are
    validated on the same images; a smaller subset is a prefix of a larger one (same seed).

    Example:
        >>> train, val = split_indices(100, val_size=10, subset=20, seed=0)
        >>> len(train), len(val), len(set(train.tolist()) & set(val.tolist()))
        (20, 10, 0)
    """
    perm = seeded_permutation(n, seed)
    n_val = resolve_count(val_size, n, "val_size")
    val, rest = perm[:n_val], perm[n_val:]
    if subset is not None:
        rest = rest[: resolve_count(subset, len(rest), "train_subset")]
    return rest.sort().values, val.sort().values
