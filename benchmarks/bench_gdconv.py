#!/usr/bin/env python
"""Speed of ``GDConv2d`` relative to ``nn.Conv2d`` with the same kernel size (issue 2, "Benchmark").

Everything is measured *interleaved* in one run: for every repetition and every candidate, the
reference ``nn.Conv2d`` and the candidate are timed back to back (the order of the pair alternates
between repetitions, the order of the candidates rotates) and the reported ratio is the median of
the per-pair ratios. Shared or throttled machines therefore hurt both sides of a ratio alike.

Measured, per shape ``in→out@H`` (H = W, ``--batch`` images, kernel ``--kernel``, ``B`` bases,
order ``K``):

- ``train``: ``zero_grad`` + forward + backward + ``SGD.step()``;
- ``inference``: eval mode under ``no_grad``, repeated calls (generated kernels are cached, so this
  is what a deployed layer costs);
- ``uncached``: the same with the kernel cache invalidated before every call (``.eval()``), i.e.
  generation + convolution;
- ``generation``: ``dense_weight()`` forward + backward, in % of the ``nn.Conv2d`` train step.

for ``GDConv2d`` non-separated (impl ``dense`` / ``basis`` / ``auto``) and separated (``dense`` /
``factorized`` / ``auto``). It also checks whether ``impl='auto'`` (cost model with
``DEPTHWISE_COST``) picks the fastest path and fits the depthwise cost factor the timings imply.

Usage::

    python benchmarks/bench_gdconv.py                 # full run, batch 64 (several minutes on CPU)
    python benchmarks/bench_gdconv.py --quick         # smoke run: batch 8, few repetitions
    python benchmarks/bench_gdconv.py --threads 1,2 --out docs/benchmarks.md   # as in docs/benchmarks.md
    python benchmarks/bench_gdconv.py --device cuda --out docs/benchmarks-cuda.md

On a CPU shared with other jobs, use ``--threads`` no larger than the number of idle cores: with
more, every parallel region waits for threads the OS has given to other processes.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gdzoo.layers import GDConv2d
from gdzoo.layers.gd_functional import DEPTHWISE_COST

SHAPES = ((1, 32, 28), (32, 32, 28), (64, 64, 14), (64, 128, 56))
VARIANTS = (  # (label, separated, impl)
    ("GD", False, "dense"),
    ("GD", False, "basis"),
    ("GD", False, "auto"),
    ("GD-sep", True, "dense"),
    ("GD-sep", True, "factorized"),
    ("GD-sep", True, "auto"),
)
TARGETS = {
    "dense_train": 1.05,
    "sep_train": 0.5,
    "sep_infer": 0.25,
    "generation_pct": 3.0,
    "cached_infer": 1.02,
}
TARGET_SHAPE = (64, 64, 14)  # the separated targets are stated at this shape


# ---------------------------------------------------------------------------------------------- timing
class Timer:
    """Wall-clock timing of one call, synchronising the device around it."""

    def __init__(self, device: torch.device) -> None:
        self.sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


@dataclass
class Paired:
    """One candidate against the reference.

    ``ratio``: median of the per-pair ratios (candidate / the reference timed next to it);
    ``best_ratio``: best candidate time / best reference time (robust to slow-downs from other
    processes, which only ever add time); ``seconds`` / ``ref_seconds``: median absolute times.
    """

    ratio: float
    best_ratio: float
    seconds: float
    ref_seconds: float
    reps: int
    ratios: list[float] = field(default_factory=list)


FLUSH_BELOW_S = 0.5  # for faster references, an untimed reference call precedes every timed pair


def interleaved(
    timer: Timer,
    reference: Callable[[], object],
    candidates: dict[str, Callable[[], object]],
    *,
    max_reps: int,
    min_reps: int,
    budget_s: float,
    warmup: int,
) -> dict[str, Paired]:
    """Time every candidate against ``reference`` in adjacent pairs; repetitions fit in ``budget_s``.

    Within a repetition the candidates' order rotates and the pair order (reference first or
    candidate first) alternates, independently. When the reference is fast, an untimed reference
    call before each pair absorbs the after-effects (allocator, caches) of the previous candidate,
    which otherwise bias the next pair.
    """
    estimate: dict[str, float] = {}
    t_ref = math.inf
    for _ in range(warmup):  # the first call of each pays allocations and backend set-up
        t_ref = min(t_ref, timer(reference))
        for name, fn in candidates.items():
            estimate[name] = min(estimate.get(name, math.inf), timer(fn))
        per_rep = len(candidates) * t_ref + sum(estimate.values())
        if per_rep > budget_s / 3:  # slow group: one warm-up is enough
            break
    flush = t_ref < FLUSH_BELOW_S
    per_rep += len(candidates) * t_ref * flush
    reps = max(min_reps, min(max_reps, int(budget_s / max(per_rep, 1e-9))))
    names = list(candidates)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    ref_times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        shift = (rep // 2) % len(names)
        for name in names[shift:] + names[:shift]:
            if flush:
                reference()
            if rep % 2 == 0:
                t_ref = timer(reference)
                t_c = timer(candidates[name])
            else:
                t_c = timer(candidates[name])
                t_ref = timer(reference)
            ratios[name].append(t_c / t_ref)
            times[name].append(t_c)
            ref_times[name].append(t_ref)
    return {
        n: Paired(
            statistics.median(ratios[n]),
            min(times[n]) / min(ref_times[n]),
            statistics.median(times[n]),
            statistics.median(ref_times[n]),
            reps,
            ratios[n],
        )
        for n in names
    }


# ---------------------------------------------------------------------------------------------- workloads
def train_step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=1e-6)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        module(x).backward(grad_out)
        opt.step()

    return step


def inference(module: nn.Module, x: torch.Tensor, *, uncached: bool = False) -> Callable[[], None]:
    module.eval()

    def run() -> None:
        if uncached:
            module.eval()  # ``.train(False)`` invalidates GDConv2d's kernel cache
        with torch.no_grad():
            module(x)

    return run


def generation(layer: GDConv2d, grad_w: torch.Tensor) -> Callable[[], None]:
    layer.train()

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        layer.dense_weight().backward(grad_w)

    return run


# ---------------------------------------------------------------------------------------------- benchmark
def variant_name(label: str, impl: str) -> str:
    return f"{label} {impl}"


def fitted_depthwise_cost(
    ratio: float, cin: int, cout: int, bases: int, n: int, k2: int, separated: bool
) -> float:
    """The depthwise cost factor for which ``path_costs`` would predict the measured time ratio.

    ``ratio`` is (time of the depthwise path) / (time of the dense convolution); the cost model
    says ``ratio = (c·depthwise + pointwise) / dense``, solved here for ``c``.
    """
    dense = cout * cin * k2
    if separated:
        depthwise, pointwise = bases * n * k2, cin * bases * n + cout * n
    else:
        depthwise, pointwise = cin * bases * n * k2, cout * cin * n
    return (ratio * dense - pointwise) / depthwise


def bench_shape(args: argparse.Namespace, shape: tuple[int, int, int], timer: Timer, device: torch.device) -> dict:
    cin, cout, hw = shape
    k = args.kernel
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cin, hw, hw, generator=gen).to(device)
    conv = nn.Conv2d(cin, cout, k, padding="same", device=device)
    grad_out = torch.randn(args.batch, cout, hw, hw, generator=gen).to(device)
    layers = {}
    for label, separated, impl in VARIANTS:
        torch.manual_seed(0)
        layers[variant_name(label, impl)] = GDConv2d(
            cin, cout, k, num_bases=args.bases, order=args.order, separated=separated, impl=impl, device=device
        )
    opts = dict(max_reps=args.reps, min_reps=args.min_reps, budget_s=args.budget, warmup=args.warmup)

    def log(msg: str) -> None:
        print(f"[{cin}→{cout}@{hw}] {msg}", file=sys.stderr, flush=True)

    log("train")
    train = interleaved(
        timer,
        train_step(copy.deepcopy(conv), x, grad_out),
        {n: train_step(copy.deepcopy(m), x, grad_out) for n, m in layers.items()},
        **opts,
    )
    log("inference")
    infer = interleaved(
        timer, inference(copy.deepcopy(conv), x), {n: inference(copy.deepcopy(m), x) for n, m in layers.items()}, **opts
    )
    log("inference, uncached")
    uncached = interleaved(
        timer,
        inference(copy.deepcopy(conv), x),
        {n: inference(copy.deepcopy(m), x, uncached=True) for n, m in layers.items()},
        **opts,
    )
    log("generation")
    grad_w = torch.randn(cout, cin, k, k, generator=gen).to(device)
    gen_res = interleaved(
        timer,
        train_step(copy.deepcopy(conv), x, grad_out),
        {
            "GD": generation(copy.deepcopy(layers["GD dense"]), grad_w),
            "GD-sep": generation(copy.deepcopy(layers["GD-sep dense"]), grad_w),
        },
        **opts,
    )
    auto = {label: layers[variant_name(label, "auto")].select_impl() for label in ("GD", "GD-sep")}
    return {"shape": shape, "train": train, "infer": infer, "uncached": uncached, "gen": gen_res, "auto": auto}


# ---------------------------------------------------------------------------------------------- report
def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def fmt_ratio(p: Paired, pct: bool = False) -> str:
    if pct:
        return f"{100 * p.ratio:.2f}% ({100 * p.best_ratio:.2f}%)"
    return f"{p.ratio:.2f}× ({p.best_ratio:.2f}×)"


def shape_name(shape: tuple[int, int, int]) -> str:
    cin, cout, hw = shape
    return f"{cin}→{cout}@{hw}"


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    else:
        dev = f"CPU ({cpu_model()})"
    return (
        f"{dev}; os.cpu_count()={os.cpu_count()}; torch {torch.__version__}; Python {platform.python_version()}; "
        f"{platform.system()} {platform.release()}"
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def render_header(args: argparse.Namespace, device: torch.device, elapsed: float) -> list[str]:
    n = (args.order + 1) * (args.order + 2) // 2
    return [
        "# GDConv2d benchmark",
        "",
        f"- Command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`",
        f"- Machine: {machine_line(device)}; device `{device}`",
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} (run took {elapsed:.0f} s); "
        f"1/5/15-min load average at start {args.load_start}, at end {load_average()} "
        "(a load above the core count means other processes competed for the CPU during the run)",
        f"- Setting: batch {args.batch}, kernel {args.kernel}×{args.kernel}, num_bases={args.bases}, "
        f"order={args.order} (N={n}), float32, `padding='same'`; `DEPTHWISE_COST`={DEPTHWISE_COST:g}",
        "- Method: every candidate is timed back to back with the reference `nn.Conv2d` (same kernel size), "
        "alternating which goes first; each cell is `median (best)`: the median over repetitions of "
        "candidate / reference, and best candidate time / best reference time, which is less sensitive "
        "to other processes on a shared machine (they only ever add time). Below 1 = faster than "
        "`nn.Conv2d`. `reps` = repetitions of train / inference (fewer for slow shapes).",
        "- train = zero_grad + forward + backward + SGD step; inference = eval + no_grad, repeated calls "
        "(generated kernels are cached); uncached = inference with the kernel cache invalidated "
        "(`.eval()`) before each call, i.e. kernel generation + convolution; generation = "
        "`dense_weight()` forward + backward in train mode, in % of one `nn.Conv2d` train step.",
        "",
    ]


def render_section(args: argparse.Namespace, results: list[dict], title: str) -> list[str]:
    n = (args.order + 1) * (args.order + 2) // 2
    k2 = args.kernel**2
    lines = [
        f"## {title}",
        "",
        "### Ratio to nn.Conv2d",
        "",
        "| shape | layer | impl | train | inference | uncached | reps |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for res in results:
        shape = shape_name(res["shape"])
        tr, inf = next(iter(res["train"].values())), next(iter(res["infer"].values()))
        lines.append(
            f"| {shape} | nn.Conv2d | — | {fmt_ms(tr.ref_seconds)} | {fmt_ms(inf.ref_seconds)} | — | "
            f"{tr.reps}/{inf.reps} |"
        )
        for label, _, impl in VARIANTS:
            name = variant_name(label, impl)
            shown = f"auto → {res['auto'][label]}" if impl == "auto" else impl
            lines.append(
                f"| {shape} | {label} | {shown} | {fmt_ratio(res['train'][name])} | {fmt_ratio(res['infer'][name])} "
                f"| {fmt_ratio(res['uncached'][name])} | |"
            )
    lines += [
        "",
        "### Kernel generation",
        "",
        "| shape | nn.Conv2d train step | GD generation | % | GD-sep generation | % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        g, gs = res["gen"]["GD"], res["gen"]["GD-sep"]
        lines.append(
            f"| {shape_name(res['shape'])} | {fmt_ms(g.ref_seconds)} | {fmt_ms(g.seconds)} | {fmt_ratio(g, pct=True)} "
            f"| {fmt_ms(gs.seconds)} | {fmt_ratio(gs, pct=True)} |"
        )
    lines += [
        "",
        f"### impl='auto' (DEPTHWISE_COST = {DEPTHWISE_COST:g})",
        "",
        "Does `auto` pick the faster path? 'fitted factor' is the depthwise cost factor for which "
        "`path_costs` would predict the measured time ratio (depthwise path / dense path) exactly; `auto` "
        "picks the depthwise path when `DEPTHWISE_COST` is below the break-even factor, so it chooses right "
        "when `DEPTHWISE_COST` and the fitted factor are on the same side of the break-even.",
        "",
        "| shape | layer | auto picks | fastest train | fastest inference | fitted factor train / inference | "
        "break-even factor |",
        "|---|---|---|---|---|---|---:|",
    ]
    for res in results:
        cin, cout, _ = res["shape"]
        for label, separated, other in (("GD", False, "basis"), ("GD-sep", True, "factorized")):
            impls = ("dense", other)
            fastest = {
                mode: min(impls, key=lambda i, m=mode: res[m][variant_name(label, i)].ratio)
                for mode in ("train", "infer")
            }
            fits = [
                fitted_depthwise_cost(
                    res[mode][variant_name(label, other)].ratio / res[mode][variant_name(label, "dense")].ratio,
                    cin, cout, args.bases, n, k2, separated,
                )
                for mode in ("train", "infer")
            ]
            break_even = fitted_depthwise_cost(1.0, cin, cout, args.bases, n, k2, separated)
            marks = "".join("✓" if res["auto"][label] == fastest[m] else "✗" for m in ("train", "infer"))
            lines.append(
                f"| {shape_name(res['shape'])} | {label} | {res['auto'][label]} (train {marks[0]}, inference "
                f"{marks[1]}) | {fastest['train']} | {fastest['infer']} | {fits[0]:.3g} / {fits[1]:.3g} | "
                f"{break_even:.3g} |"
            )
    lines += ["", "### Targets (issue 2)", "", "| target | measured (worst case) | met |", "|---|---|---|"]
    lines += target_rows(results)
    lines.append("")
    return lines


def target_rows(results: list[dict]) -> list[str]:
    """One row per target: the worst case over shapes / layers, judged on the median ratio."""
    rows = []

    def row(text: str, limit: float, cases: list[tuple[Paired, str]], pct: bool = False) -> None:
        if not cases:
            return
        scale = 100.0 if pct else 1.0
        paired, where = max(cases, key=lambda c: c[0].ratio)
        best = max(p.best_ratio for p, _ in cases)
        unit = "%" if pct else "×"
        rows.append(
            f"| {text} | {scale * paired.ratio:.3g}{unit} ({where}); best-time ratio ≤ {scale * best:.3g}{unit} "
            f"| {'yes' if scale * paired.ratio <= limit else '**no**'} |"
        )

    dense = [(r["train"][variant_name(lbl, "dense")], f"{lbl} dense, {shape_name(r['shape'])}")
             for r in results for lbl in ("GD", "GD-sep")]
    row(f"dense train ≤ {TARGETS['dense_train']}×", TARGETS["dense_train"], dense)
    for r in results:
        if r["shape"] != TARGET_SHAPE:
            continue
        where = f"GD-sep auto → {r['auto']['GD-sep']}"
        row(f"separated train ≤ {TARGETS['sep_train']}× at {shape_name(TARGET_SHAPE)}", TARGETS["sep_train"],
            [(r["train"][variant_name("GD-sep", "auto")], where)])
        row(f"separated inference ≤ {TARGETS['sep_infer']}× at {shape_name(TARGET_SHAPE)}", TARGETS["sep_infer"],
            [(r["infer"][variant_name("GD-sep", "auto")], where)])
    gen = [(r["gen"][lbl], f"{lbl}, {shape_name(r['shape'])}") for r in results for lbl in ("GD", "GD-sep")]
    row(f"kernel generation ≤ {TARGETS['generation_pct']}% of a dense train step", TARGETS["generation_pct"], gen,
        pct=True)
    cached = [(r["infer"][variant_name(lbl, "dense")], f"{lbl} dense, {shape_name(r['shape'])}")
              for r in results for lbl in ("GD", "GD-sep")]
    row(f"cached inference ≤ {TARGETS['cached_infer']}×", TARGETS["cached_infer"], cached)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 4, 3 repetitions, 1 warm-up")
    p.add_argument("--out", type=Path, default=None,
                   help="also write the markdown report here (e.g. docs/benchmarks.md)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--bases", type=int, default=4)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--shapes", default=None, help="comma-separated in:out:hw triples (default: the issue's four)")
    p.add_argument("--reps", type=int, default=15, help="max repetitions per measurement")
    p.add_argument("--min-reps", type=int, default=3, help="repetitions even when over budget")
    p.add_argument("--budget", type=float, default=25.0, help="seconds per measurement group that set the repetitions")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--threads", default=None,
        help="comma-separated torch.set_num_threads settings, each measured in turn (default: torch's choice)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.reps, args.min_reps, args.warmup, args.budget = min(args.batch, 4), 3, 3, 1, 2.0
    args.threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    args.shapes = (
        tuple(tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")) if args.shapes else SHAPES
    )
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    timer = Timer(device)
    args.load_start = load_average()
    start = time.perf_counter()
    sections = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"--- {threads} intra-op thread(s)", file=sys.stderr, flush=True)
        results = [bench_shape(args, shape, timer, device) for shape in args.shapes]
        title = f"{threads} intra-op thread{'s' if threads > 1 else ''} (`torch.set_num_threads({threads})`)"
        section = render_section(args, results, title)
        print("\n".join(section), file=sys.stderr, flush=True)  # partial results, in case a later setting fails
        sections += section
    report = "\n".join(render_header(args, device, time.perf_counter() - start) + sections)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return report


if __name__ == "__main__":
    main()
