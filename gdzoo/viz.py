"""Pictures of Gaussian-derivative layers: a layer's basis kernels and its learned filters, as PNG.

Both functions draw with matplotlib's object API on an Agg canvas (no ``pyplot``, no display, no
global backend switch), so they are safe in scripts, tests and servers. Each kernel is shown with a
symmetric, per-kernel colour range (``RdBu_r``: positive red, negative blue, zero white), like the
authors' notebook.

The image size is deterministic: ``figure_size(nrows, ncols, cell, header)`` inches, i.e.
``ncols · cell`` by ``nrows · cell + header``, at ``dpi`` dots per inch (``plot_basis``: ``nrows = B``,
``ncols = N``, ``header = BASIS_HEADER``; ``plot_filters``: one row per output and one column per
input channel shown, ``header = FILTERS_HEADER``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._io import atomic_write

__all__ = ["plot_basis", "plot_filters", "figure_size", "BASIS_HEADER", "FILTERS_HEADER"]

BASIS_HEADER = 0.8  # inches above the grid: figure title + the first row's three-line panel titles
FILTERS_HEADER = 0.55  # figure title + the column headers
CMAP = "RdBu_r"


def figure_size(nrows: int, ncols: int, cell: float, header: float) -> tuple[float, float]:
    """Figure size in inches for an ``nrows × ncols`` grid of ``cell``-inch panels below ``header`` inches."""
    return ncols * cell, nrows * cell + header


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))  # never a half-written PNG


def _grid(nrows: int, ncols: int, cell: float, header: float, title: str, hspace: float) -> tuple[Figure, list[list]]:
    width, height = figure_size(nrows, ncols, cell, header)
    fig = Figure(figsize=(width, height))
    top = 1.0 - header / height
    left = min(0.3 / width, 0.2)  # room for the row labels
    axes = fig.subplots(
        nrows, ncols, squeeze=False,
        gridspec_kw={"top": top, "bottom": 0.1 * cell / height, "left": left, "right": 0.99, "hspace": hspace,
                     "wspace": 0.15},
    )
    fig.suptitle(title, fontsize=8, y=1.0 - 0.05 / height, va="top", linespacing=1.2)
    return fig, axes


def _show(ax, kernel: torch.Tensor) -> None:  # matplotlib Axes
    limit = float(kernel.abs().max()) or 1.0
    ax.imshow(kernel.numpy(), cmap=CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _gd_layer(layer: nn.Module) -> nn.Module:
    if hasattr(layer, "reparam_conv"):
        raise ValueError("the layer was reparameterized: its Gaussian parameters are gone; plot_filters still works")
    if not all(hasattr(layer, name) for name in ("sigma", "mu", "theta", "basis", "orders")):
        raise TypeError(f"expected a GDConv2d, got {type(layer).__name__}")
    return layer


@torch.no_grad()
def plot_basis(
    layer: nn.Module,
    path: str | Path,
    *,
    max_bases: int | None = None,
    cell: float = 1.3,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Draw the layer's basis kernels ``φ^{b,n}``: one row per basis ``b``, one column per kernel ``n``.

    Every panel is titled with its derivative orders ``(p, q)``, scales ``σ = (σ1, σ2)``, shift
    ``μ = (μ1, μ2)`` (taps) and angle ``θ`` (degrees).

    Args:
        layer: a ``GDConv2d`` (before ``reparameterize()``).
        path: PNG file to write (parent folders are created).
        max_bases: draw at most this many bases (default: all).
        cell: panel size in inches.
        dpi: resolution; the image is ``figure_size(rows, N, cell, BASIS_HEADER)`` inches times ``dpi``.
        title: figure title (default: a summary of the layer).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    layer = _gd_layer(layer)
    basis = layer.basis().detach().float().cpu()  # (B, N, kH, kW)
    sigma, mu = layer.sigma.detach().float().cpu(), layer.mu.detach().float().cpu()
    theta = layer.theta.detach().float().cpu()
    num_bases = basis.shape[0] if max_bases is None else min(max_bases, basis.shape[0])
    orders = layer.orders
    if title is None:
        kh, kw = basis.shape[-2:]
        title = (f"Gaussian-derivative basis\n{basis.shape[0]} bases × {basis.shape[1]} kernels "
                 f"(order ≤ {max(p + q for p, q in orders)}), {kh}×{kw} taps")
    fig, axes = _grid(num_bases, basis.shape[1], cell, BASIS_HEADER, title, hspace=0.6)
    for b in range(num_bases):
        for n, (p, q) in enumerate(orders):
            ax = axes[b][n]
            _show(ax, basis[b, n])
            ax.set_title(
                f"({p},{q})  θ={math.degrees(float(theta[b, n])):.0f}°\n"
                f"σ=({sigma[b, n, 0]:.2f},{sigma[b, n, 1]:.2f})\n"
                f"μ=({mu[b, n, 0]:.2f},{mu[b, n, 1]:.2f})",
                fontsize=6,
                linespacing=1.1,
            )
        axes[b][0].set_ylabel(f"basis {b}", fontsize=7)
    return _save(fig, path, dpi)


@torch.no_grad()
def plot_filters(
    layer: nn.Module,
    path: str | Path,
    *,
    max_out: int = 8,
    max_in: int = 4,
    cell: float = 0.9,
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Draw the learned filters ``W[o, i]`` (``dense_weight()``) of the first outputs and inputs.

    Rows are output channels ``o < max_out``, columns input channels ``i < max_in``. Also accepts a
    reparameterized ``GDConv2d`` whose ``reparam_conv`` is one ``nn.Conv2d``, or a plain
    ``nn.Conv2d`` (handy to compare with free-form filters).

    Args:
        layer: ``GDConv2d`` or ``nn.Conv2d``.
        path: PNG file to write (parent folders are created).
        max_out, max_in: how many output / input channels to draw.
        cell: panel size in inches.
        dpi: resolution; the image is ``figure_size(rows, cols, cell, FILTERS_HEADER)`` inches times ``dpi``.
        title: figure title (default: a summary of the layer).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if max_out < 1 or max_in < 1:
        raise ValueError(f"max_out and max_in must be >= 1, got {max_out} and {max_in}")
    source = getattr(layer, "reparam_conv", layer)
    if hasattr(source, "dense_weight"):
        weight = source.dense_weight()
    elif isinstance(source, nn.Conv2d) and source.groups == 1:
        weight = source.weight
    else:
        raise TypeError(f"expected a GDConv2d or an nn.Conv2d with groups=1, got {type(source).__name__}")
    weight = weight.detach().float().cpu()
    n_out, n_in = min(max_out, weight.shape[0]), min(max_in, weight.shape[1])
    if title is None:
        title = (f"{type(layer).__name__} filters\n"
                 f"out 0–{n_out - 1} of {weight.shape[0]}, in 0–{n_in - 1} of {weight.shape[1]}")
    fig, axes = _grid(n_out, n_in, cell, FILTERS_HEADER, title, hspace=0.15)
    for o in range(n_out):
        for i in range(n_in):
            _show(axes[o][i], weight[o, i])
        axes[o][0].set_ylabel(f"out {o}", fontsize=7)
    for i in range(n_in):
        axes[0][i].set_title(f"in {i}", fontsize=7)
    return _save(fig, path, dpi)
