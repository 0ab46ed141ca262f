"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP spin-wait stalls on the shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def newcomer(tmp_path_factory: pytest.TempPathFactory):
    """gdzoo installed from a freshly built wheel into a new venv, used offline with empty caches."""
    from _newcomer import make_newcomer

    return make_newcomer(tmp_path_factory.mktemp("newcomer"))
