"""Independent checks of exported artefacts for the export tests: run the file with its runtime, compare with eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn


def ort_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    """Run an ONNX file with onnxruntime (one thread), on its CPU provider."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())})
    return torch.from_numpy(out)


def pt2_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(x)


def eager_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_matches(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """``max |got − want| ≤ rel · max |want|`` and the same argmax over dim 1 (classes or mask pixels)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    err, scale = (got.double() - want.double()).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale, f"max |Δ| {err:.3g} > {rel} × {scale:.3g}"
    assert torch.equal(got.argmax(1), want.argmax(1)), "argmax differs"
