"""The Triton kernels of :mod:`.basis_triton` (imported on first use). ``triton.jit`` decides when it decorates
whether a kernel runs compiled or in Triton's CPU interpreter (``TRITON_INTERPRET=1``), and so did it for
triton's own helpers (``tl.sum``) when triton was imported: both must agree for the interpreter to run them.

A program handles ``BLOCK_K`` kernels (rows: flattened ``(b, n)``) × ``BLOCK_T`` taps (columns).
"""

import triton
import triton.language as tl

# Interpreted only when these kernels and triton's helpers both are (InterpretedFunction, not JITFunction).
INTERPRETED = triton.knobs.runtime.interpret and not isinstance(tl.sum, triton.runtime.JITFunction)


@triton.jit
def _softplus(x):
    # log1p(exp(x)) without overflow or cancellation: max(x, 0) + log1p(exp(-|x|)), log1p as Goldberg's
    # log(w)·e/(w−1), w = 1 + e (exact to a few ulp where 1 + e rounds).
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _derivatives(y, sigma, order, MAX_ORDER: tl.constexpr, EXTRA: tl.constexpr):
    """``(G_o, G_{o+1}, G_{o+2})(y; σ)`` for each row's order ``o`` (a ``(BLOCK_K, 1)`` column, ≤ MAX_ORDER);
    only ``G_o`` when ``EXTRA`` is 0 (the forward), the others then equal it."""
    inv_var = 1.0 / (sigma * sigma)
    g_prev = y * 0.0
    g = tl.exp(-0.5 * y * y * inv_var) / (2.5066282746310002 * sigma)  # √(2π)
    g0, g1, g2 = g, g, g
    for k in tl.static_range(MAX_ORDER + 1 + EXTRA):
        g0 = tl.where(order == k, g, g0)
        if EXTRA > 0:
            g1 = tl.where(order + 1 == k, g, g1)
            g2 = tl.where(order + 2 == k, g, g2)
        g, g_prev = -(y * inv_var) * g - (k * inv_var) * g_prev, g
    return g0, g1, g2


@triton.jit
def _geometry(sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, sigma_min_hi, sigma_min_lo, BN, N, KH, KW,
              BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
    """This program's rows and taps, per tap the rotated ``(u1, u2)`` and shifted ``(y1, y2)`` coordinates
    (``(BLOCK_K, BLOCK_T)``), per row the raw scales and scales (``(BLOCK_K,)``) and orders ``(p, q)``
    (``(BLOCK_K, 1)``). σ_min comes as two float32 arguments (hi + lo, Triton passes Python floats as float32) so
    that float64 kernels get it to float64 precision."""
    rows = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    live_rows = rows < BN
    taps = tl.arange(0, BLOCK_T)
    raw1 = tl.load(sigma_raw_ptr + 2 * rows, mask=live_rows, other=0.0)
    raw2 = tl.load(sigma_raw_ptr + 2 * rows + 1, mask=live_rows, other=0.0)
    x1 = ((taps % KW).to(tl.float32) - (KW - 1) * 0.5).to(raw1.dtype)[None, :]
    x2 = ((taps // KW).to(tl.float32) - (KH - 1) * 0.5).to(raw1.dtype)[None, :]
    theta = tl.load(theta_ptr + rows, mask=live_rows, other=0.0)[:, None]
    c, s = tl.cos(theta), tl.sin(theta)
    u1 = x1 * c + x2 * s
    u2 = -x1 * s + x2 * c
    y1 = u1 - tl.load(mu_ptr + 2 * rows, mask=live_rows, other=0.0)[:, None]
    y2 = u2 - tl.load(mu_ptr + 2 * rows + 1, mask=live_rows, other=0.0)[:, None]
    sigma_min = (raw1 * 0.0 + sigma_min_hi) + sigma_min_lo  # in raw's dtype (interpreted scalars have no .to)
    sigma1 = sigma_min + _softplus(raw1)
    sigma2 = sigma_min + _softplus(raw2)
    n = rows % N
    p = tl.load(orders_ptr + 2 * n, mask=live_rows, other=0)[:, None]
    q = tl.load(orders_ptr + 2 * n + 1, mask=live_rows, other=0)[:, None]
    return rows, live_rows, taps, u1, u2, y1, y2, raw1, raw2, sigma1, sigma2, p, q


@triton.jit
def forward_kernel(sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, out_ptr, sigma_min_hi, sigma_min_lo, BN, N, KH, KW,
                   MAX_ORDER: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr):
    rows, live_rows, taps, u1, u2, y1, y2, raw1, raw2, sigma1, sigma2, p, q = _geometry(
        sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, sigma_min_hi, sigma_min_lo, BN, N, KH, KW, BLOCK_K, BLOCK_T)
    f1, _, _ = _derivatives(y1, sigma1[:, None], p, MAX_ORDER, 0)
    f2, _, _ = _derivatives(y2, sigma2[:, None], q, MAX_ORDER, 0)
    live = live_rows[:, None] & (taps < KH * KW)[None, :]
    tl.store(out_ptr + rows[:, None] * (KH * KW) + taps[None, :], f1 * f2, mask=live)


@triton.jit
def backward_kernel(grad_ptr, sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, grad_sigma_raw_ptr, grad_mu_ptr,
                    grad_theta_ptr, sigma_min_hi, sigma_min_lo, BN, N, KH, KW, MAX_ORDER: tl.constexpr,
                    BLOCK_K: tl.constexpr,
                    BLOCK_T: tl.constexpr):
    rows, live_rows, taps, u1, u2, y1, y2, raw1, raw2, sigma1, sigma2, p, q = _geometry(
        sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, sigma_min_hi, sigma_min_lo, BN, N, KH, KW, BLOCK_K, BLOCK_T)
    live = live_rows[:, None] & (taps < KH * KW)[None, :]
    grad = tl.load(grad_ptr + rows[:, None] * (KH * KW) + taps[None, :], mask=live, other=0.0)
    f1, d1, h1 = _derivatives(y1, sigma1[:, None], p, MAX_ORDER, 2)
    f2, d2, h2 = _derivatives(y2, sigma2[:, None], q, MAX_ORDER, 2)
    w1 = tl.where(live, grad * f2, 0.0)  # ∂φ/∂(axis-1 factor) · grad
    w2 = tl.where(live, grad * f1, 0.0)
    gy1 = w1 * d1
    gy2 = w2 * d2
    # ∂softplus/∂raw = sigmoid(raw)
    g_sigma1 = tl.sum(w1 * h1, axis=1) * sigma1 / (1.0 + tl.exp(-raw1))
    g_sigma2 = tl.sum(w2 * h2, axis=1) * sigma2 / (1.0 + tl.exp(-raw2))
    tl.store(grad_sigma_raw_ptr + 2 * rows, g_sigma1, mask=live_rows)
    tl.store(grad_sigma_raw_ptr + 2 * rows + 1, g_sigma2, mask=live_rows)
    tl.store(grad_mu_ptr + 2 * rows, -tl.sum(gy1, axis=1), mask=live_rows)
    tl.store(grad_mu_ptr + 2 * rows + 1, -tl.sum(gy2, axis=1), mask=live_rows)
    tl.store(grad_theta_ptr + rows, tl.sum(gy1 * u2 - gy2 * u1, axis=1), mask=live_rows)
