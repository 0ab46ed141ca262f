"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's CPU interpreter for the fused generator's tests (tests/test_fused_generation.py). Triton reads it once,
    # when it is imported (importing gdzoo or timm does), so it is set here, before anything imports it. Without
    # CUDA nothing else runs Triton; GDZOO_GENERATOR stays 'auto', which is torch on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import gdzoo.layers.gd_conv as gd_conv_module
from gdzoo import GDConv2d


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


@pytest.fixture()
def generate_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts calls to ``GDConv2d._generate`` (kernel generation)."""
    calls: list[str] = []
    original = gd_conv_module.GDConv2d._generate

    def counting(self: GDConv2d, impl: str) -> tuple[torch.Tensor, ...]:
        calls.append(impl)
        return original(self, impl)

    monkeypatch.setattr(gd_conv_module.GDConv2d, "_generate", counting)
    return calls
