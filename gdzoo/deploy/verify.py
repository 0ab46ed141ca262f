"""Comparing an exported artefact's outputs with the eager GD model's: relative error and predicted labels.

The error is ``max |exported − eager| / max |eager|`` over a batch (scale-aware: logits of any magnitude share one
tolerance). The labels are the argmax over dim 1: the class of each image, or the mask of a segmentation model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

__all__ = ["Comparison", "compare_outputs", "FP32_TOLERANCE", "FP16_TOLERANCE"]

FP32_TOLERANCE = 1e-5  # float32 kernels, reordered sums (onnxruntime's convolutions): ~1e-6 measured
FP16_TOLERANCE = 1e-2  # half precision: a 10-bit mantissa (rel. step 2^-11 ≈ 5e-4) accumulated over the layers


@dataclass
class Comparison:
    """One batch's agreement: the shapes, the relative error, and how many predicted labels differ."""

    name: str
    input_shape: list[int]
    output_shape: list[int]
    max_abs_error: float
    output_scale: float
    rel_error: float
    labels: int
    labels_differing: int
    tolerance: float
    near_ties_allowed: bool = False
    labels_differing_beyond_ties: int = -1  # differing labels whose eager top-2 margin exceeds 2 × tolerance × scale
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        if not self.near_ties_allowed or self.labels_differing_beyond_ties < 0:  # every differing label counts
            self.labels_differing_beyond_ties = self.labels_differing
        self.passed = self.rel_error <= self.tolerance and self.labels_differing_beyond_ties == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.name}: input {'x'.join(map(str, self.input_shape))}, max |Δ| {self.max_abs_error:.3g} = "
                f"{self.rel_error:.3g} × max |output| ({self.output_scale:.3g}), tolerance {self.tolerance:g}; "
                f"argmax differs at {self.labels_differing}/{self.labels}"
                + (f" ({self.labels_differing_beyond_ties} beyond near-ties)"
                   if self.near_ties_allowed else "")
                + f" -> {verdict}")


def compare_outputs(name: str, x: torch.Tensor, got: torch.Tensor, want: torch.Tensor, tolerance: float,
                    allow_near_ties: bool = False) -> Comparison:
    """How far the exported output ``got`` is from the eager ``want`` on input ``x``.

    With ``allow_near_ties`` (float16 artefacts), labels may differ where ``want``'s top-2 margin is at most
    2 × tolerance × scale.

    Example:
        >>> want = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
        >>> c = compare_outputs('demo', torch.zeros(2, 1), want + 1e-3, want, 1e-5)
        >>> round(c.rel_error, 6), c.labels_differing, c.passed
        (0.000333, 0, False)
    """
    if tuple(got.shape) != tuple(want.shape):
        return Comparison(name, list(x.shape), list(got.shape), float("inf"), float("nan"), float("inf"),
                          want.numel() // max(want.shape[1], 1), want.numel() // max(want.shape[1], 1), tolerance)
    got, want = got.detach().double(), want.detach().double()
    max_abs = (got - want).abs().max().item() if got.numel() else 0.0
    scale = want.abs().max().item() if want.numel() else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    if not torch.isfinite(got).all():
        rel = float("inf")
    labels_got, labels_want = got.argmax(1), want.argmax(1)
    differs = labels_got != labels_want
    beyond = -1
    if allow_near_ties and want.shape[1] > 1:
        top2 = want.topk(2, dim=1).values
        beyond = int((differs & ((top2[:, 0] - top2[:, 1]) > 2 * tolerance * scale)).sum())
    return Comparison(name, list(x.shape), list(got.shape), max_abs, scale, rel, labels_want.numel(),
                      int(differs.sum()), tolerance, allow_near_ties, beyond)
