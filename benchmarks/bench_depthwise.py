#!/usr/bin/env python
"""Depthwise ``GDConv2d`` against depthwise ``nn.Conv2d`` at large kernel sizes (issue #21).

A Gaussian-derivative filter's size is independent of its parameter count: a depthwise ``k×k`` GD layer has
``C·N`` combination weights and ``5·N`` geometry numbers per basis whatever ``k`` is, where ``nn.Conv2d``
has ``C·k²``. This measures what the size costs in *time*: train step, cached inference and uncached
inference (kernel generation + convolution) as ratios to ``nn.Conv2d(C, C, k, groups=C)``, timed interleaved in
one run (``bench_gdconv.interleaved``: adjacent pairs, alternating order, median of per-pair ratios and
best-time ratio), plus the kernel generation time alone (``dense_weight()`` forward + backward).

GD variants: one basis shared by every channel (``num_bases=1``) and one basis per channel
(``num_bases=C``), order 3 (N = 10), ``impl='auto'`` (dense for depthwise layers).

Usage::

    python benchmarks/bench_depthwise.py                          # k = 7, 13, 31, 51
    python benchmarks/bench_depthwise.py --quick                  # smoke run
    python benchmarks/bench_depthwise.py --out docs/benchmarks_depthwise.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gdzoo.layers import GDConv2d

from bench_gdconv import Timer, inference, interleaved, train_step

KERNELS = (7, 13, 31, 51)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def generation_seconds(layer: GDConv2d, reps: int) -> float:
    """Best time of ``dense_weight()`` forward + backward (train mode, no cache)."""
    layer.train()
    grad = torch.randn_like(layer.dense_weight().detach())
    best = float("inf")
    for _ in range(reps + 1):
        start = time.perf_counter()
        layer.dense_weight().backward(grad)
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    timer = Timer(torch.device("cpu"))
    c, h, batch = args.channels, args.size, args.batch
    x = torch.randn(batch, c, h, h)
    grad_out = torch.randn(batch, c, h, h)
    rows = []
    for k in args.kernels:
        ref = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
        gds = {
            "GD, 1 shared basis": GDConv2d(c, c, k, groups=c, num_bases=1, order=3),
            f"GD, {c} bases (1 per channel)": GDConv2d(c, c, k, groups=c, num_bases=c, order=3),
        }
        cells: dict[str, dict[str, object]] = {name: {} for name in gds}
        for workload, make in (
            ("train", lambda m: train_step(m, x, grad_out)),
            ("inference", lambda m: inference(m, x)),
            ("uncached", lambda m: inference(m, x, uncached=True)),
        ):
            reference = train_step(ref, x, grad_out) if workload == "train" else inference(ref, x)
            paired = interleaved(timer, reference, {n: make(m) for n, m in gds.items()},
                                 max_reps=args.reps, min_reps=3, budget_s=args.budget, warmup=2)
            for name, p in paired.items():
                cells[name][workload] = p
        rows.append((k, ref, gds, cells))
        partial = ", ".join(f"{name}: train {cells[name]['train'].ratio:.2f}×, inference "
                            f"{cells[name]['inference'].ratio:.2f}×" for name in gds)
        print(f"k={k} done ({partial})", file=sys.stderr, flush=True)  # survives an interrupted run

    load_end = os.getloadavg()
    lines = [
        "| k | layer | params | train | inference | uncached | generation | reps |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, ref, gds, cells in rows:
        first = next(iter(cells.values()))
        lines.append(f"| {k} | `nn.Conv2d(groups={c})` | {count(ref):,} | {fmt_s(first['train'].ref_seconds)} | "
                     f"{fmt_s(first['inference'].ref_seconds)} | — | — | "
                     f"{first['train'].reps}/{first['inference'].reps} |")
        for name, m in gds.items():
            cell = cells[name]
            ratio = {w: f"{cell[w].ratio:.2f}× ({cell[w].best_ratio:.2f}×)" for w in ("train", "inference", "uncached")}
            gen = generation_seconds(m, 3)
            lines.append(f"| {k} | {name} | {count(m):,} | {ratio['train']} | {ratio['inference']} | "
                         f"{ratio['uncached']} | {fmt_s(gen)} | |")
    header = [
        "## Depthwise GD vs depthwise nn.Conv2d, large kernels (`benchmarks/bench_depthwise.py`)",
        "",
        f"- Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- Machine: CPU ({platform.processor() or platform.machine()}); os.cpu_count()={os.cpu_count()}; torch "
        f"{torch.__version__}; {args.threads} intra-op thread(s)",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; load average "
        f"at start {args.load_start[0]:.1f}, at end {load_end[0]:.1f} (2 cores: above 2 = other processes competed)",
        f"- Setting: {c} channels, {h}×{h} maps, batch {batch}, `padding=k//2`, float32; GD order 3 (N = 10), "
        "`impl='auto'` (dense: one grouped conv with the generated kernel)",
        "- Cells: `median (best)` ratio to the `nn.Conv2d` timed next to it (below 1 = faster); the "
        "`nn.Conv2d` row gives its median absolute times. generation = `dense_weight()` forward + backward, best of 3.",
        "",
    ]
    return "\n".join(header + lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=lambda s: tuple(int(v) for v in s.split(",")), default=KERNELS)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per (kernel size, workload) group")
    parser.add_argument("--quick", action="store_true", help="k = 7, 31; 3 repetitions")
    parser.add_argument("--out", type=Path, help="write the markdown table here (atomically) as well")
    args = parser.parse_args()
    if args.quick:
        args.kernels, args.reps, args.budget = (7, 31), 3, 2.0
    args.load_start = os.getloadavg()
    table = run(args)
    print(table)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(table, encoding="utf-8")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
