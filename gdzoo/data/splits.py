"""Seeded, reproducible index splits: held-out validation sets and training subsets (Table 1's 1000, 5000, …)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["class_quotas", "resolve_count", "seeded_permutation", "split_indices", "stratified_split_indices"]


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


def class_quotas(class_sizes: Sequence[int], total: int) -> list[int]:
    """How many of each class's samples a stratified split of ``total`` holds out.

    Shares are proportional to the class sizes (largest remainder), every class with at least two samples gives at
    least one when ``total`` allows it, and no class gives all its samples (one is kept to train on).

    Example:
        >>> class_quotas([6, 6, 6], 3), class_quotas([10, 2, 1], 3), class_quotas([1, 1], 1)
        ([1, 1, 1], [2, 1, 0], [0, 0])
    """
    room = [max(0, n - 1) for n in class_sizes]
    total = min(total, sum(room))
    n_all = sum(class_sizes) or 1
    quota = [0] * len(class_sizes)
    eligible = [c for c, r in enumerate(room) if r > 0]
    if total >= len(eligible):  # one each first: every class is validated
        for c in eligible:
            quota[c] = 1
    while sum(quota) < total:  # then the class furthest below its proportional share
        c = max((c for c in eligible if quota[c] < room[c]),
                key=lambda c: (total * class_sizes[c] / n_all - quota[c], -c))
        quota[c] += 1
    return quota


def stratified_split_indices(
    labels: Sequence[int], val_size: int | float | None = 0, subset: int | float | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`split_indices` stratified by class: ``val_size`` held out class by class (:func:`class_quotas`:
    proportional, at least one per class where the class has two samples), each class's picks seeded.

    Example:
        >>> labels = [0] * 6 + [1] * 6 + [2] * 6
        >>> train, val = stratified_split_indices(labels, 0.15, seed=0)
        >>> len(train), sorted(labels[i] for i in val.tolist())
        (15, [0, 1, 2])
    """
    labels = [int(v) for v in labels]
    n = len(labels)
    classes = sorted(set(labels))
    members = {c: [i for i, v in enumerate(labels) if v == c] for c in classes}
    quotas = class_quotas([len(members[c]) for c in classes], resolve_count(val_size, n, "val_size"))
    val: list[int] = []
    for k, (c, quota) in enumerate(zip(classes, quotas)):
        order = seeded_permutation(len(members[c]), seed + k).tolist()
        val += [members[c][i] for i in order[:quota]]
    held = set(val)
    rest = [i for i in range(n) if i not in held]
    if subset is not None:
        count = resolve_count(subset, len(rest), "train_subset")
        rest = [rest[i] for i in seeded_permutation(len(rest), seed).tolist()][:count]
    return torch.tensor(sorted(rest), dtype=torch.long), torch.tensor(sorted(val), dtype=torch.long)
