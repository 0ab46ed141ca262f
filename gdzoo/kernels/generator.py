"""Which code generates Gaussian-derivative bases: the fused Triton kernels or plain torch ops.

``GDZOO_GENERATOR`` (environment) or :func:`set_generator` / :func:`generator` (Python) choose:

- ``'auto'`` (default): the fused Triton kernels for CUDA tensors when ``triton`` imports, torch ops elsewhere;
- ``'triton'``: the fused kernels wherever they can run (CUDA, or any device's tensors under ``TRITON_INTERPRET=1``,
  Triton's CPU interpreter, which is how the tests run them); an error where they cannot;
- ``'torch'``: torch ops everywhere (today's code path on CPU, MPS, and without Triton).

Both give the same values and gradients (tests/test_fused_generation.py); the choice is about speed.
:func:`basis_code` makes the whole choice for each call, in one place: the fused op, one of the two autograd
Functions of :mod:`.basis`, or plain torch ops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["BASIS_CODES", "GENERATORS", "basis_code", "generator", "get_generator", "set_generator", "triton_available",
           "triton_interpreting", "uses_triton"]

GENERATORS = ("auto", "triton", "torch")
ENV = "GDZOO_GENERATOR"
_override: str | None = None  # set_generator's choice; None: the environment's (or 'auto')


def _checked(name: object, source: str) -> str:
    if name not in GENERATORS:
        raise ValueError(f"{source} must be one of {GENERATORS}, got {name!r}")
    return name  # type: ignore[return-value]


def get_generator() -> str:
    """The generator asked for: :func:`set_generator`'s, else ``$GDZOO_GENERATOR``, else ``'auto'``.

    Example:
        >>> with generator("torch"):
        ...     get_generator()
        'torch'
    """
    if _override is not None:
        return _override
    return _checked(os.environ.get(ENV, "auto") or "auto", f"${ENV}")


def set_generator(name: str | None) -> None:
    """Choose the generator for this process (``None``: back to ``$GDZOO_GENERATOR`` / ``'auto'``)."""
    global _override
    _override = None if name is None else _checked(name, "generator")


@contextlib.contextmanager
def generator(name: str) -> Iterator[None]:
    """Use generator ``name`` inside a ``with`` block (restores the previous choice after it)."""
    global _override
    previous, _override = _override, _checked(name, "generator")
    try:
        yield
    finally:
        _override = previous


_TRITON = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether ``triton`` can be imported (it ships with the Linux CUDA wheels of torch)."""
    return _TRITON


def triton_interpreting() -> bool:
    """Whether Triton runs its kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def uses_triton(device: torch.device) -> bool:
    """Whether bases for tensors on ``device`` come from the fused Triton kernels under the current choice.

    Raises:
        RuntimeError: the choice is ``'triton'`` and they cannot run there (no triton, or a CPU tensor without
            ``TRITON_INTERPRET=1``).
    """
    choice = get_generator()
    if choice == "torch":
        return False
    runnable = triton_available() and (device.type == "cuda" or triton_interpreting())
    if choice == "auto":
        return runnable and device.type == "cuda"
    if not runnable:
        why = "triton is not installed" if not triton_available() else f"tensors are on {device.type}"
        raise RuntimeError(f"generator 'triton' cannot run here ({why}): it needs CUDA tensors, or TRITON_INTERPRET=1 "
                           f"for Triton's CPU interpreter; use 'auto' or 'torch' (${ENV} / gdzoo.set_generator)")
    return True


# What computes a basis: the fused custom op (gdzoo::gd_basis), basis.py's autograd.Function with an analytic backward,
# its variant that also has a forward-mode derivative, or plain torch ops (autograd through them).
BASIS_CODES = ("fused", "function", "function_fwd", "plain")


def _forward_ad_possible() -> bool:
    """Inside ``torch.autograd.forward_ad.dual_level`` or a ``torch.func`` transform (``jvp``, ``jacfwd``...)."""
    return torch.autograd.forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def basis_code(device: torch.device, raw: bool = True) -> str:
    """Which of :data:`BASIS_CODES` computes a basis for tensors on ``device`` now (the one place that decides).

    ``raw``: the caller holds ``sigma_raw`` (GDConv2d, :func:`~gdzoo.kernels.gaussian_derivative_basis_raw`), so the
    fused op and, under ``torch.jit.trace``, plain ops (a trace records a custom Function as an opaque Python call,
    not serialisable) are options; without it (:func:`~gdzoo.kernels.gaussian_derivative_basis`) only the two
    Functions are. The fused op steps aside for tracing, export and forward-mode AD / ``torch.func`` transforms
    (outside ``torch.compile``); ``'function_fwd'`` serves the latter, ``'function'`` everything else.

    Example:
        >>> with generator("torch"):
        ...     basis_code(torch.device("cpu")), basis_code(torch.device("cpu"), raw=False)
        ('function', 'function')
    """
    compiling = torch.compiler.is_compiling()
    if raw:
        if torch.jit.is_tracing():
            return "plain"
        if not torch.compiler.is_exporting() and (compiling or not _forward_ad_possible()) and uses_triton(device):
            return "fused"
    return "function" if compiling or not _forward_ad_possible() else "function_fwd"
