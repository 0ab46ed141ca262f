"""The Triton kernels of :mod:`.basis_triton` (imported on first use). ``triton.jit`` decides when it decorates
whether a kernel runs compiled or in Triton's CPU interpreter (``TRITON_INTERPRET=1``), and so did it for
triton's own helpers (``tl.sum``) when triton was imported: both must agree for the interpreter to run them."""

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
def _derivatives(y, sigma, order, MAX_ORDER: tl.constexpr):
    """``(G_o, G_{o+1}, G_{o+2})(y; σ)`` for the program's order ``o`` (a scalar ≤ MAX_ORDER)."""
    inv_var = 1.0 / (sigma * sigma)
    g_prev = y * 0.0
    g = tl.exp(-0.5 * y * y * inv_var) / (2.5066282746310002 * sigma)  # √(2π)
    g0, g1, g2 = g, g, g
    for k in tl.static_range(MAX_ORDER + 3):
        g0 = tl.where(order == k, g, g0)
        g1 = tl.where(order + 1 == k, g, g1)
        g2 = tl.where(order + 2 == k, g, g2)
        g, g_prev = -(y * inv_var) * g - (k * inv_var) * g_prev, g
    return g0, g1, g2


@triton.jit
def _geometry(sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, sigma_min, N, KH, KW, BLOCK: tl.constexpr):
    """This program's tap coordinates ``(u1, u2, y1, y2)``, scales, raw scales and orders ``(p, q)``."""
    bn = tl.program_id(0)
    n = bn % N
    taps = tl.arange(0, BLOCK)
    x1 = (taps % KW).to(tl.float32) - (KW - 1) * 0.5
    x2 = (taps // KW).to(tl.float32) - (KH - 1) * 0.5
    raw1 = tl.load(sigma_raw_ptr + 2 * bn)
    raw2 = tl.load(sigma_raw_ptr + 2 * bn + 1)
    x1, x2 = x1.to(raw1.dtype), x2.to(raw1.dtype)
    theta = tl.load(theta_ptr + bn)
    c, s = tl.cos(theta), tl.sin(theta)
    u1 = x1 * c + x2 * s
    u2 = -x1 * s + x2 * c
    y1 = u1 - tl.load(mu_ptr + 2 * bn)
    y2 = u2 - tl.load(mu_ptr + 2 * bn + 1)
    sigma1 = sigma_min + _softplus(raw1)
    sigma2 = sigma_min + _softplus(raw2)
    p = tl.load(orders_ptr + 2 * n)
    q = tl.load(orders_ptr + 2 * n + 1)
    return bn, taps, u1, u2, y1, y2, raw1, raw2, sigma1, sigma2, p, q


@triton.jit
def forward_kernel(sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, out_ptr, sigma_min, N, KH, KW,
                   MAX_ORDER: tl.constexpr, BLOCK: tl.constexpr):
    bn, taps, u1, u2, y1, y2, raw1, raw2, sigma1, sigma2, p, q = _geometry(
        sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, sigma_min, N, KH, KW, BLOCK)
    f1, _, _ = _derivatives(y1, sigma1, p, MAX_ORDER)
    f2, _, _ = _derivatives(y2, sigma2, q, MAX_ORDER)
    tl.store(out_ptr + bn * KH * KW + taps, f1 * f2, mask=taps < KH * KW)


@triton.jit
def backward_kernel(grad_ptr, sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, grad_sigma_raw_ptr, grad_mu_ptr,
                    grad_theta_ptr, sigma_min, N, KH, KW, MAX_ORDER: tl.constexpr, BLOCK: tl.constexpr):
    bn, taps, u1, u2, y1, y2, raw1, raw2, sigma1, sigma2, p, q = _geometry(
        sigma_raw_ptr, mu_ptr, theta_ptr, orders_ptr, sigma_min, N, KH, KW, BLOCK)
    live = taps < KH * KW
    grad = tl.load(grad_ptr + bn * KH * KW + taps, mask=live, other=0.0)
    f1, d1, h1 = _derivatives(y1, sigma1, p, MAX_ORDER)
    f2, d2, h2 = _derivatives(y2, sigma2, q, MAX_ORDER)
    w1 = tl.where(live, grad * f2, 0.0)  # ∂φ/∂(axis-1 factor) · grad
    w2 = tl.where(live, grad * f1, 0.0)
    gy1 = w1 * d1
    gy2 = w2 * d2
    # ∂softplus/∂raw = sigmoid(raw)
    tl.store(grad_sigma_raw_ptr + 2 * bn, sigma1 * tl.sum(w1 * h1, axis=0) / (1.0 + tl.exp(-raw1)))
    tl.store(grad_sigma_raw_ptr + 2 * bn + 1, sigma2 * tl.sum(w2 * h2, axis=0) / (1.0 + tl.exp(-raw2)))
    tl.store(grad_mu_ptr + 2 * bn, -tl.sum(gy1, axis=0))
    tl.store(grad_mu_ptr + 2 * bn + 1, -tl.sum(gy2, axis=0))
    tl.store(grad_theta_ptr + bn, tl.sum(gy1 * u2 - gy2 * u1, axis=0))
