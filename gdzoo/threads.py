"""The caller's choice of torch's intra-op thread count, for a block of code (library code never sets it).

Why: gdzoo's kernel-space fits run on tiny tensors; on a busy CPU extra OpenMP threads only spin (fitting
gd_vgg16's stem took 78 s with 2 threads at load ~5 on 2 cores, 3.8 s with one). ``torch.set_num_threads``
is process-wide, so it belongs to whoever owns the process: the ``gdzoo`` command and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["intra_op_threads"]


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then restore the previous count (``None``: leave it).

    Example:
        >>> before = torch.get_num_threads()
        >>> with intra_op_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 or None (torch's current setting), got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
