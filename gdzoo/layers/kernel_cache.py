"""The kernel cache shared by the Gaussian layers (GDConv2d, DAUConv2d): generated kernels reused while gradients are
off and their sources hold the same bits, never while the forward is being captured (compile, export, tracing).

:class:`CachedKernelConv` is the base class that holds it, with what else both layers share: ``nn.Conv2d``'s
spatial arguments, state-dict keys in one order, input checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ._params import PADDING_MODES, padding_arg, positive_pair
from .gd_functional import ConvSpec

__all__ = ["CachedKernelConv"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# Host tensors with at least this many elements are snapshot and compared as bytes (one memcmp), several
# times faster than torch.equal's element loop; smaller ones with torch.equal (less call overhead).
_BYTES_MIN_NUMEL = 2048


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` reinterpreted as integers of its element size: equality is then bitwise (NaN == NaN, -0 != 0)."""
    return t.view(_INT_OF_SIZE[t.element_size()]) if t.is_floating_point() else t


def _same_bits_one_read(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    """Off the CPU torch.equal waits for the device once per tensor: compare everything, then read one flag."""
    return not bool(torch.stack([torch.ne(x, y).any() for x, y in zip(a, b)]).any())


class _Snapshot:
    """An exact copy of the bits of some tensors; ``matches`` says whether they still hold exactly those bits."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.meta = tuple((t.shape, t.dtype, t.device) for t in tensors)
        self.host = all(t.device.type == "cpu" for t in tensors)
        self.copies = tuple(
            bits.numpy().tobytes() if self.host and bits.numel() >= _BYTES_MIN_NUMEL else bits.clone()
            for bits in (_bits(t.detach()) for t in tensors)
        )

    def matches(self, tensors: tuple[torch.Tensor, ...]) -> bool:
        if tuple((t.shape, t.dtype, t.device) for t in tensors) != self.meta:
            return False
        bits = tuple(_bits(t.detach()) for t in tensors)
        if not self.host:
            return _same_bits_one_read(self.copies, bits)
        return all(
            copy == b.numpy().tobytes() if isinstance(copy, bytes) else torch.equal(copy, b)
            for copy, b in zip(self.copies, bits)
        )


# fx.symbolic_trace (is_fx_tracing() also answers for torch.export, with a logged warning)
_is_fx_symbolic_tracing = getattr(
    torch.fx._symbolic_trace, "is_fx_symbolic_tracing", torch.fx._symbolic_trace.is_fx_tracing
)


def _graph_capture() -> bool:
    """True while the forward is being captured rather than run: ``torch.compile``/``torch.export`` (strict or
    not, so ONNX's dynamo exporter too), ``torch.jit.trace``/``script`` (and the TorchScript ONNX exporter, which
    traces), FX symbolic tracing and ``torch.func`` transforms. Cached kernels would become constants there."""
    return (
        torch.compiler.is_compiling()  # torch.export sets it too (strict: dynamo; non-strict: explicitly)
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or _is_fx_symbolic_tracing()
        or torch._C._are_functorch_transforms_active()
    )


class CachedKernelConv(nn.Module):
    """What GDConv2d and DAUConv2d share: a value-snapshot cache of their generated kernels (left out of pickles,
    dropped on ``train()`` / ``.to()``), state-dict keys in one order whichever geometry is a buffer, input checks.

    Subclasses set ``_state_order`` and ``in_channels`` and call :meth:`_cached` for their kernels.
    """

    _state_order: tuple[str, ...] = ()
    _cache: tuple | None = None

    def _set_spatial(self, kernel_size, stride, padding, dilation, padding_mode: str) -> None:
        """Validate and store nn.Conv2d's spatial arguments (clear errors naming the bad value)."""
        self.kernel_size = positive_pair("kernel_size", kernel_size)
        self.stride = positive_pair("stride", stride)
        self.dilation = positive_pair("dilation", dilation)
        self.padding = padding_arg(padding, self.stride)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode

    @property
    def conv_spec(self) -> ConvSpec:
        return ConvSpec(self.stride, self.padding, self.dilation, self.padding_mode, self.kernel_size)

    def _cached(self, key: tuple, sources: tuple[torch.Tensor, ...], generate: Callable[[], Any]) -> Any:
        """``generate()``, reused while gradients are off and ``key`` and the sources' bits are unchanged.

        Version counters are not enough: fused optimizers (``Adam(..., fused=True)``) and writes through
        ``param.data`` change values without bumping them. So the sources (σ, μ, θ and the combination
        weights: small next to the kernels) are compared bit for bit with a snapshot taken when the kernels
        were generated; any difference regenerates. This costs a read of the sources per call: ≈ 30–60 µs on
        one CPU core for 64→64 channels, N = 10 (41k values), i.e. < 0.1 % of a batch-64 14×14 forward and
        ≈ 3–5 % at batch 1 (docs/benchmarks.md); on an accelerator, one host-device sync per layer and call, which
        is why layers whose generation is cheaper than that sync (:meth:`_cache_pays`) regenerate instead.
        """
        if torch.is_grad_enabled() or _graph_capture() or not self._cache_pays():
            return generate()
        cache = self._cache
        if cache is None or cache[0] != key or not cache[1].matches(sources):
            self._cache = cache = (key, _Snapshot(sources), generate())
        return cache[2]

    def _cache_pays(self) -> bool:
        """Whether reusing kernels beats regenerating them (overridden where generation is one fused launch)."""
        return True

    def __getstate__(self) -> dict:
        """Pickling and ``copy.deepcopy`` leave the kernel cache out (it is rebuilt on demand)."""
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # nn.Module's signature
        """As ``nn.Module``, with the keys in one order whichever geometry is a parameter or a buffer."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key in [prefix + name for name in self._state_order if prefix + name in destination]:
            destination[key] = destination.pop(key)

    def train(self, mode: bool = True):  # returns self, as nn.Module.train
        self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # nn.Module's signature
        self._cache = None
        return super()._apply(fn, recurse)

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not x.is_floating_point():  # the kernels would be cast to it: zeros for integers
            raise RuntimeError(f"{name} expects a floating-point input, got {x.dtype} (as nn.Conv2d, which raises "
                               "for integer inputs); convert it, e.g. x.float() / 255")
        if x.dim() not in (3, 4):
            raise ValueError(f"{name} expects a (N, C, H, W) or (C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[-3] != self.in_channels:
            raise ValueError(
                f"{name} expects {self.in_channels} input channels, got {x.shape[-3]} (input shape {tuple(x.shape)})"
            )
