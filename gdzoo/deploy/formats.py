"""Writing a reparameterised model in one deployment format, and running the written file back.

``onnx``: ``torch.onnx.export`` (the torch.export-based exporter), run with onnxruntime. ``pt2``:
``torch.export.save``, run with ``torch.export.load``. ``safetensors``: the plain twin's weights
(:mod:`gdzoo.deploy.twins`), run by loading them into that architecture. Each writer is atomic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .._io import atomic_write
from ..errors import UserError

__all__ = ["FORMATS", "Runner", "ExportSpec", "write_artefact", "load_runner", "onnxruntime_or_error"]

FORMATS = ("onnx", "pt2", "safetensors")

Runner = Callable[[torch.Tensor], torch.Tensor]  # input batch -> output of the exported artefact


@dataclass
class ExportSpec:
    """What the artefact accepts: an example batch, whether the batch varies, the multiple H / W vary by (None:
    fixed), and (onnx) the opset (None: the exporter's)."""

    example: torch.Tensor
    dynamic_batch: bool
    dynamic_size: int | None
    opset: int | None

    def dynamic_shapes(self) -> tuple[dict[int, Any]] | None:
        """torch.export's ``dynamic_shapes`` for the one input: batch, and H / W as multiples of ``dynamic_size``."""
        from torch.export import Dim

        dims: dict[int, Any] = {}
        if self.dynamic_batch:
            dims[0] = Dim("batch", min=1, max=4096)
        if self.dynamic_size:
            m = self.dynamic_size
            dims[2] = m * Dim("height_blocks", min=1, max=8192 // m)
            dims[3] = m * Dim("width_blocks", min=1, max=8192 // m)
        return (dims,) if dims else None


def onnxruntime_or_error() -> Any:
    """The onnxruntime module, or a :class:`UserError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise UserError("checking an ONNX export needs onnxruntime: pip install 'gdzoo[export]' "
                        "(or pip install onnxruntime)") from e
    return onnxruntime


def _exported_program(model: nn.Module, spec: ExportSpec) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(model, (spec.example,), dynamic_shapes=spec.dynamic_shapes())


def _write_onnx(model: nn.Module, spec: ExportSpec, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise UserError("--format onnx needs onnx and onnxscript: pip install 'gdzoo[export]'") from e
    program = _exported_program(model, spec)
    kwargs = {"opset_version": spec.opset} if spec.opset else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.onnx's notes on its own translation (not the user's to act on)
        onnx_program = torch.onnx.export(program, (spec.example,), dynamo=True, verbose=False,
                                         input_names=["input"], output_names=["output"], **kwargs)
    atomic_write(path, lambda tmp: onnx_program.save(tmp))


def _write_pt2(model: nn.Module, spec: ExportSpec, path: Path) -> None:
    import io

    program = _exported_program(model, spec)
    buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, or a buffer; the temp file has neither
    torch.export.save(program, buffer)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def _write_safetensors(model: nn.Module, architecture: str, path: Path) -> None:
    from safetensors.torch import save_file

    from .twins import PLAIN_TWINS, twin_state_dict

    twin = PLAIN_TWINS[architecture][0] if architecture in PLAIN_TWINS else architecture
    state = twin_state_dict(model, twin)
    metadata = {"architecture": twin, "exported_from": architecture}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def write_artefact(fmt: str, model: nn.Module, spec: ExportSpec, path: Path, architecture: str) -> None:
    """Write the reparameterised ``model`` as ``fmt`` to ``path``."""
    if fmt == "onnx":
        _write_onnx(model, spec, path)
    elif fmt == "pt2":
        _write_pt2(model, spec, path)
    elif fmt == "safetensors":
        _write_safetensors(model, architecture, path)
    else:
        raise UserError(f"--format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")


def _onnx_runner(path: Path) -> Runner:
    ort = onnxruntime_or_error()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        (out, *_) = session.run(None, {name: np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(out)

    return run


def _pt2_runner(path: Path) -> Runner:
    module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def _safetensors_runner(path: Path, model: nn.Module, architecture: str, dtype: torch.dtype) -> Runner:
    from safetensors.torch import load_file

    from .twins import build_twin

    twin = build_twin(architecture, model).to(dtype)
    twin.load_state_dict(load_file(str(path)), strict=True)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return twin(x)

    return run


def load_runner(fmt: str, path: Path, model: nn.Module, architecture: str, dtype: torch.dtype) -> Runner:
    """A function running the artefact at ``path`` the way a deployment would (not through gdzoo's layers)."""
    if fmt == "onnx":
        return _onnx_runner(path)
    if fmt == "pt2":
        return _pt2_runner(path)
    return _safetensors_runner(path, model, architecture, dtype)
