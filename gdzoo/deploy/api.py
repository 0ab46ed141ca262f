"""``gdzoo.export``: a trained GD model -> a plain-convolution artefact (ONNX, torch.export, safetensors), checked.

The GD layers are reparameterised (timm's ``reparameterize_model``: each GDConv2d becomes ``nn.Conv2d``), the
result is written, and the written file is run back with its own runtime and compared with the eager GD model on
real inputs (:mod:`gdzoo.deploy.inputs`). The comparison is printed by the CLI and saved beside the file as JSON.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write_text
from ..errors import UserError
from .formats import FORMATS, ExportSpec, load_runner, write_artefact
from .inputs import check_inputs
from .verify import FP16_TOLERANCE, FP32_TOLERANCE, Comparison, compare_outputs

__all__ = ["ExportResult", "export", "report_path_for"]


@dataclass
class ExportResult:
    """The written artefact, its JSON report, and the checks that ran on it (``passed``: all within tolerance)."""

    path: Path
    report_path: Path
    format: str
    architecture: str
    inputs: str
    dtype: str
    checks: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {"file": str(self.path), "format": self.format, "architecture": self.architecture, "dtype": self.dtype,
                "inputs": self.inputs, "passed": self.passed, "checks": [c.to_dict() for c in self.checks]}

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.format}, {self.dtype}, from {self.architecture}); "
                 f"checked on {self.inputs}:"]
        lines += [f"  {c.summary()}" for c in self.checks]
        lines.append(f"verification {'passed' if self.passed else 'FAILED'} (report: {self.report_path})")
        return "\n".join(lines)


def report_path_for(path: str | os.PathLike) -> Path:
    """Where the verification report of an artefact goes: ``<file>.verification.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".verification.json")


def _load(model: str | nn.Module, checkpoint: str | os.PathLike | None, pretrained: bool,
          random_init: bool) -> tuple[nn.Module, str]:
    """The eager model and its architecture name: a module as given, else published (or, with ``pretrained``,
    fetched / derived) weights, a run, or random init (only when asked: as ``gdzoo eval``)."""
    if isinstance(model, nn.Module):
        if checkpoint is not None:
            raise UserError("give either a model object or a checkpoint, not both")
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        return model, architecture
    from ..training.inference import choose_weights, load_trained_model

    pretrained = choose_weights("export", model, checkpoint, pretrained, random_init)
    loaded, recipe = load_trained_model(model, checkpoint, pretrained)
    name = model or (recipe.model.name if recipe else "")
    return loaded, (loaded.pretrained_cfg or {}).get("architecture") or name.split(".")[0]


def _input_size(model: nn.Module, input_size: tuple[int, int, int] | None) -> tuple[int, int, int]:
    size = tuple(input_size or (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or ())
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise UserError(f"--input-size must be three positive ints C H W, got {' '.join(map(str, size)) or 'nothing'}")
    return size  # type: ignore[return-value]


def _dynamic_size(model: nn.Module, size: tuple[int, int, int]) -> int | None:
    """The multiple the U-nets' height and width vary by (their padding multiple); None for the other models."""
    from ..models import UNet

    if not isinstance(model, UNet):
        return None
    multiple = int(model.pad_multiple)
    if size[1] % multiple or size[2] % multiple:
        raise UserError(f"--input-size {' '.join(map(str, size))}: a U-net exports with dynamic height and width in "
                        f"multiples of {multiple}; give H and W that are multiples of {multiple}")
    return multiple


RUNTIMES = {"onnx": "onnxruntime", "pt2": "torch.export.load", "safetensors": "the plain twin"}


def _does_not_run(fmt: str, path: Path, half: bool, error: BaseException) -> UserError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    hint = ("; float16 needs a kernel for every op in the runtime (onnxruntime's CPU provider lacks some): "
            "export without --half" if half else "")
    return UserError(f"{path} was written but {RUNTIMES[fmt]} cannot run it: {reason}{hint}")


def _runnable(fmt: str, path: Path, eager: nn.Module, architecture: str, dtype: torch.dtype):
    """The artefact's runner; a file its runtime cannot load raises a :class:`UserError` naming it."""
    try:
        return load_runner(fmt, path, eager, architecture, dtype)
    except UserError:
        raise
    except Exception as e:
        raise _does_not_run(fmt, path, dtype == torch.float16, e) from e


def _run_batched(runner, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """``runner`` over ``x`` in chunks of ``batch`` (the artefact's fixed batch), or all at once."""
    if batch is None:
        return runner(x)
    return torch.cat([runner(x[i:i + batch]) for i in range(0, len(x), batch)])


def export(
    model: str | nn.Module,
    output: str | os.PathLike,
    format: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    opset: int | None = None,
    input_size: tuple[int, int, int] | None = None,
    dynamic_batch: bool = False,
    half: bool = False,
    tolerance: float | None = None,
    data_dir: str | None = None,
    num_images: int = 10,
) -> ExportResult:
    """Export ``model`` (``'gd_unet.monuseg'``, a name with ``checkpoint``, or a module) to ``output`` and check it.

    ``format`` defaults to the file's suffix (``.onnx``, ``.pt2``, ``.safetensors``). The artefact is run back on
    ``num_images`` real inputs and compared with the eager GD model in float32; ``tolerance`` bounds
    max |Δ| / max |output| (default 1e-5, or 1e-2 with ``half``), and every argmax (class or mask pixel) must agree.
    A U-net exports with dynamic height and width (multiples of its padding multiple, checked at a second size).
    A module given as ``model`` is put in eval mode (float32); it is copied before being reparameterised.

    Example:
        >>> import tempfile, timm, gdzoo
        >>> net = timm.create_model('gd_fmnist')
        >>> result = gdzoo.export(net, tempfile.mkdtemp() + '/gd_fmnist.pt2', num_images=2)
        >>> result.passed, result.checks[0].output_shape
        (True, [2, 10])
    """
    path = Path(output)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise UserError(f"format {fmt!r} (from {'--format' if format else f'the suffix of {path}'}) is not supported; "
                        f"choose one of {', '.join(FORMATS)}")
    if num_images < 1:
        raise UserError(f"num_images must be at least 1, got {num_images}")
    if opset is not None and fmt != "onnx":
        raise UserError(f"--opset applies to --format onnx, not {fmt}")
    eager, architecture = _load(model, checkpoint, pretrained, random_init)
    eager = eager.eval().float()
    size = _input_size(eager, input_size)
    dynamic_size = _dynamic_size(eager, size)
    dtype = torch.float16 if half else torch.float32
    tolerance = tolerance if tolerance is not None else (FP16_TOLERANCE if half else FP32_TOLERANCE)

    from timm.utils.model import reparameterize_model

    inputs = check_inputs(eager, num_images, size, data_dir)
    try:
        with torch.no_grad():
            eager(inputs.images[:1])
    except (RuntimeError, ValueError) as e:  # wrong channels, or too small for the network: say which flag to change
        raise UserError(f"{architecture} does not take --input-size {' '.join(map(str, size))} "
                        f"({str(e).strip().splitlines()[0][:200]}); give the size it was trained on") from e
    deployed = reparameterize_model(copy.deepcopy(eager)).eval().to(dtype)
    # an example batch of 2 when the batch varies: torch.export would specialise a traced batch of 1 to a constant
    example = inputs.images[:1].repeat(2 if dynamic_batch else 1, 1, 1, 1).to(dtype)
    spec = ExportSpec(example, dynamic_batch, dynamic_size, opset)
    write_artefact(fmt, deployed, spec, path, architecture)
    runner = _runnable(fmt, path, eager, architecture, dtype)
    fixed_batch = None if dynamic_batch or fmt == "safetensors" else 1

    batches = [(f"batch of {len(inputs.images)}" if fixed_batch is None else "one image at a time", inputs.images)]
    if dynamic_size:
        _, h, w = size
        other = check_inputs(eager, min(num_images, 2), (size[0], h + dynamic_size, w + 2 * dynamic_size), data_dir)
        batches.append((f"second size {h + dynamic_size}x{w + 2 * dynamic_size}", other.images))
    result = ExportResult(path, report_path_for(path), fmt, architecture, inputs.source,
                          str(dtype).removeprefix("torch."))
    for name, x in batches:
        with torch.no_grad():
            want = eager(x)
        try:
            got = _run_batched(lambda b: runner(b.to(dtype)).float(), x, fixed_batch)
        except Exception as e:
            raise _does_not_run(fmt, path, half, e) from e
        result.checks.append(compare_outputs(name, x, got, want, tolerance, allow_near_ties=half))
    atomic_write_text(result.report_path, json.dumps(result.to_dict(), indent=2) + "\n")
    return result
