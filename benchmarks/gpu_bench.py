#!/usr/bin/env python
"""GPU timings of gdzoo (issue 16): GDConv2d against nn.Conv2d, and models' AMP training throughput.

Every ratio comes from one run, timed interleaved (bench_gdconv's ``interleaved``: candidate and
reference back to back, order alternating, median of the per-pair ratios) with the device
synchronised around each call. Writes a Markdown report to stdout, and with ``--docs`` replaces the
GPU section of docs/benchmarks.md (between its marker comments; CUDA results only).

Usage::

    python benchmarks/gpu_bench.py --device cuda --docs docs/benchmarks.md   # what gpu_check.sh runs
    python benchmarks/gpu_bench.py --device cpu --small                        # CI plumbing check, seconds
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gdzoo  # noqa: F401  (registers the models)
from gdzoo import GDConv2d
from gdzoo.kernels import generator
from gdzoo.kernels.generator import triton_available, triton_interpreting

from bench_gdconv import SHAPES, Paired, Timer, interleaved

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
MODES = (("fp32", "train"), ("fp32", "inference"), ("bf16", "train"), ("bf16", "inference"))


@dataclass(frozen=True)
class LayerCase:
    """One layer workload: ``cin→cout@hw``, batch, kernel, bases, order."""

    cin: int
    cout: int
    hw: int
    batch: int
    kernel: int
    bases: int
    order: int
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.cin}→{self.cout}@{self.hw}{self.note}"


@dataclass(frozen=True)
class ModelCase:
    """A GD model, the conventional model it is compared with, and the training input."""

    name: str
    reference: str
    batch: int
    size: int
    kwargs: tuple[tuple[str, object], ...] = ()  # for both models, e.g. a slimmer VGG head in --small


def layer_cases(small: bool) -> list[LayerCase]:
    """bench_gdconv's shapes (7×7, B=4, K=3) at batch 64 and 256, and gd_vgg16's stem (3→64@224, 3×3, B=16, K=3)."""
    if small:
        return [LayerCase(1, 8, 12, 2, 7, 4, 3), LayerCase(8, 8, 12, 2, 7, 4, 3),
                LayerCase(3, 16, 16, 2, 3, 16, 3, " (stem)")]
    cases = [LayerCase(cin, cout, hw, batch, 7, 4, 3) for batch in (64, 256) for cin, cout, hw in SHAPES]
    return cases + [LayerCase(3, 64, 224, batch, 3, 16, 3, " (gd_vgg16 stem)") for batch in (64, 256)]


def model_cases(small: bool) -> list[ModelCase]:
    """gd_fmnist, ff_fmnist, gd_unet, unet5 and gd_vgg16 (against timm's vgg16)."""
    if small:
        return [ModelCase("gd_fmnist", "ff_fmnist", 4, 28), ModelCase("gd_unet", "unet5", 2, 32),
                ModelCase("gd_vgg16", "vgg16", 1, 32, (("mlp_ratio", 1 / 64),))]  # head 20 M params, not 120 M
    return [ModelCase("gd_fmnist", "ff_fmnist", 256, 28), ModelCase("gd_unet", "unet5", 32, 128),
            ModelCase("gd_vgg16", "vgg16", 64, 224)]


def autocast(device: torch.device, precision: str):  # a context manager
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# ---------------------------------------------------------------------------------------------- layer
def layer_step(module: nn.Module, x: torch.Tensor, precision: str, mode: str) -> Callable[[], None]:
    """One call of ``mode``: train = zero_grad + forward + backward + SGD step; inference = eval + no_grad."""
    device = x.device
    if mode == "inference":
        module.eval()

        def infer() -> None:
            with torch.no_grad(), autocast(device, precision):
                module(x)

        return infer
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=1e-6)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            y = module(x)
        y.float().square().mean().backward()
        opt.step()

    return train


def bench_layer(case: LayerCase, device: torch.device, timer: Timer,
                opts: dict) -> dict[tuple[str, str], dict[str, Paired]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, case.cin, case.hw, case.hw, generator=gen).to(device)
    torch.manual_seed(0)
    conv = nn.Conv2d(case.cin, case.cout, case.kernel, padding="same", device=device)
    layers = {f"GD{'-sep' if sep else ''}": GDConv2d(case.cin, case.cout, case.kernel, num_bases=case.bases,
                                                    order=case.order, separated=sep, device=device)
              for sep in (False, True)}
    results = {}
    for precision, mode in MODES:
        print(f"[layer {case.name} batch {case.batch}] {precision} {mode}", file=sys.stderr, flush=True)
        results[precision, mode] = interleaved(
            timer, layer_step(conv, x, precision, mode),
            {name: layer_step(layer, x, precision, mode) for name, layer in layers.items()}, **opts)
    results["impl"] = {name: layer.select_impl() for name, layer in layers.items()}  # type: ignore[assignment]
    return results


# ---------------------------------------------------------------------------------------------- models
def model_step(model: nn.Module, case: ModelCase, device: torch.device) -> Callable[[], None]:
    """AMP bf16 training step (channels_last, AdamW): classification or per-pixel segmentation loss."""
    model.to(device, memory_format=torch.channels_last).train()
    chans = model.pretrained_cfg["input_size"][0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, chans, case.size, case.size, generator=gen).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    with torch.no_grad(), autocast(device, "bf16"):
        out_shape = model(x).shape
    target = torch.randint(0, out_shape[1], (out_shape[0], *out_shape[2:]), generator=gen).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, "bf16"):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return step


def generation_step(model: nn.Module) -> Callable[[], None]:
    """Kernel generation alone, as a train step runs it: every GDConv2d's kernels for its path, forward + backward."""
    layers = [m for m in model.modules() if isinstance(m, GDConv2d)]

    def run() -> None:
        total = sum((m.dense_weight() if m.select_impl() == "dense" else m.basis()).sum() for m in layers)
        total.backward()

    return run


# Operators that launch no kernel on CUDA: allocations and aliasing (views are recognised by their schema).
NO_LAUNCH = {"aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
             "aten.detach", "aten.lift_fresh", "aten.alias"}


class LaunchCounter(TorchDispatchMode):
    """Counts the operators a call dispatches that each launch at least one kernel on CUDA, forward and backward
    (below autograd: a custom op such as ``gdzoo::gd_basis`` counts once; views, allocations and ops without a
    tensor result do not count). What CUDA's own count would be, less the extra kernels of cuDNN / cuBLAS calls."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
        if tensors and not func.is_view and str(func.overloadpacket) not in NO_LAUNCH:
            self.count += 1
        return out


def count_launches(fn: Callable[[], object], device: torch.device) -> int:
    """Kernels launched by one call: on CUDA the profiler's kernel events; elsewhere :class:`LaunchCounter`."""
    fn()
    if device.type != "cuda":
        with LaunchCounter() as counter:
            fn()
        return counter.count
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def cuda_path():  # a context manager
    """The generator CUDA takes ('auto'); off CUDA, the fused kernels in Triton's interpreter when it is on, so that
    launch counts on CPU are those of the CUDA path (``gpu_check.sh --cpu`` sets ``TRITON_INTERPRET=1``)."""
    return generator("triton" if triton_available() and triton_interpreting() else "auto")


def gd_layer_launches(model: nn.Module, case: ModelCase, device: torch.device) -> tuple[float, float, float]:
    """Mean launches of one GD layer's train-step work (forward + backward, bf16 autocast, its input as the model feeds
    it) with the generator CUDA takes and with the torch ops, and of the same layer as a plain convolution
    (``reparameterize()``), over the model's GD layers."""
    layers = [m for m in model.modules() if isinstance(m, GDConv2d)]
    inputs: dict[GDConv2d, torch.Tensor] = {}

    def keep_input(module: nn.Module, args: tuple, _: torch.Tensor) -> None:
        inputs.setdefault(module, args[0].detach())

    hooks = [m.register_forward_hook(keep_input) for m in layers]
    chans = model.pretrained_cfg["input_size"][0]
    with torch.no_grad(), autocast(device, "bf16"), cuda_path():
        model(torch.randn(1, chans, case.size, case.size, device=device))
    for h in hooks:
        h.remove()

    def step(layer: nn.Module, x: torch.Tensor, path) -> Callable[[], None]:  # a context manager factory
        grad = None

        def run() -> None:
            nonlocal grad
            layer.zero_grad(set_to_none=True)
            with autocast(device, "bf16"), path():
                y = layer(x)
            grad = torch.ones_like(y) if grad is None else grad
            y.backward(grad)

        return run

    counts: dict[str, list[int]] = {"gd": [], "torch": [], "plain": []}
    for layer in layers:
        x = inputs[layer]
        twin = copy.deepcopy(layer)
        twin.reparameterize()
        counts["gd"].append(count_launches(step(layer.train(), x, cuda_path), device))
        counts["torch"].append(count_launches(step(layer, x, lambda: generator("torch")), device))
        counts["plain"].append(count_launches(step(twin.train(), x, cuda_path), device))
    return statistics.mean(counts["gd"]), statistics.mean(counts["torch"]), statistics.mean(counts["plain"])


def compiled_step(model: nn.Module, case: ModelCase, device: torch.device, backend: str) -> Callable[[], None]:
    """:func:`model_step` with ``torch.compile(model, backend=backend)`` (compiled on its first call)."""
    return model_step(torch.compile(model, backend=backend), case, device)


def bench_model(case: ModelCase, device: torch.device, timer: Timer, opts: dict, compile_backend: str) -> dict:
    print(f"[model {case.name} vs {case.reference}] AMP bf16 train", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    gd = timm.create_model(case.name, **dict(case.kwargs))
    ref = timm.create_model(case.reference, num_classes=gd.num_classes, in_chans=gd.pretrained_cfg["input_size"][0],
                            **dict(case.kwargs))
    gd_step = model_step(gd, case, device)
    paired = interleaved(timer, model_step(ref, case, device), {"gd": gd_step}, **opts)["gd"]
    gen = interleaved(timer, gd_step, {"gen": generation_step(gd)}, **opts)["gen"]
    print(f"[model {case.name} vs {case.reference}] torch.compile ({compile_backend})", file=sys.stderr, flush=True)
    torch._dynamo.reset()
    gd_compiled = compiled_step(copy.deepcopy(gd), case, device, compile_backend)
    compiled = interleaved(timer, compiled_step(copy.deepcopy(ref), case, device, compile_backend),
                           {"gd": gd_compiled}, **opts)["gd"]
    with cuda_path():
        launches = {"launches_step": count_launches(gd_step, device),
                    "launches_generation": count_launches(generation_step(gd), device)}
    per_layer, per_layer_torch, per_plain = gd_layer_launches(gd, case, device)
    return {"paired": paired, "generation": gen, "compiled": compiled, "compile_backend": compile_backend,
            "eager_over_compiled": paired.seconds / compiled.seconds, **launches, "launches_per_gd_layer": per_layer,
            "launches_per_gd_layer_torch": per_layer_torch, "launches_per_plain_layer": per_plain}


# ---------------------------------------------------------------------------------------------- report
def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def machine_line(device: torch.device) -> str:
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    cuda = f"; CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else ""
    return f"{dev}; torch {torch.__version__}{cuda}; timm {timm.__version__}; Python {platform.python_version()}"


def render(args: argparse.Namespace, device: torch.device, layers: list[tuple[LayerCase, dict]],
           models: list[tuple[ModelCase, dict]], elapsed: float) -> str:
    lines = [
        f"- Command: `python benchmarks/gpu_bench.py {' '.join(args.argv)}`",
        f"- Machine: {machine_line(device)}; device `{device}`"
        + (f"; cuDNN conv fp32 precision `{torch.backends.cudnn.conv.fp32_precision}` (TF32 allowed unless `ieee`)"
           if device.type == "cuda" else ""),
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} (took {elapsed:.0f} s)",
        "- Method: each cell is the median over interleaved repetitions of (candidate time / reference time), "
        "the device synchronised around every call; below 1 = faster than the reference. GDConv2d runs "
        "`impl='auto'` (its path is shown). train = zero_grad + forward + backward + SGD step; inference = "
        "eval + no_grad (kernels cached on CPU; on CUDA the fused generator regenerates them, which costs less than "
        "the cache's host sync); bf16 = `torch.autocast` bfloat16.",
        "",
        "### GDConv2d / nn.Conv2d (same kernel size)",
        "",
        "| shape | batch | kernel | layer | path | fp32 train | fp32 inference | bf16 train | bf16 inference |",
        "|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for case, res in layers:
        kernel = f"{case.kernel}×{case.kernel}"
        times = " | ".join(fmt_ms(next(iter(res[m].values())).ref_seconds) for m in MODES)
        lines.append(f"| {case.name} | {case.batch} | {kernel} | nn.Conv2d | — | {times} |")
        for name, impl in res["impl"].items():
            ratios = " | ".join(f"{res[m][name].ratio:.3g}×" for m in MODES)
            lines.append(f"| {case.name} | {case.batch} | {kernel} B={case.bases} K={case.order} | {name} | {impl} | "
                         f"{ratios} |")
    lines += [
        "",
        "### Training throughput (AMP bf16, channels_last, AdamW)",
        "",
        "generation = every GDConv2d's kernel generation (forward + backward) alone, in % of the GD model's eager "
        "step; compiled = both models under `torch.compile` (backend in brackets), GD over reference, and the GD "
        "model's eager step over its compiled one; launches = kernels per call, "
        + ("CUDA kernel events" if device.type == "cuda" else
           "counted on CPU as the dispatched operators that launch ≥ 1 kernel on CUDA (views and allocations do not), "
           "with the generator CUDA takes "
           + ("(the fused Triton kernels, interpreted)" if triton_interpreting() and triton_available()
              else "(torch ops: TRITON_INTERPRET=1 was not set)"))
        + "; per GD layer = one GD layer's forward + backward in the step (bf16, its input as the model feeds it), "
        "mean over the model's GD layers: with that generator, with the torch ops (`GDZOO_GENERATOR=torch`), and "
        "as the same layer made a plain `nn.Conv2d` (`reparameterize()`).",
        "",
        "| model | input | batch | img/s | reference | reference img/s | time ratio | compiled ratio | eager / "
        "compiled | generation | launches step / generation | launches per GD layer / torch ops / plain conv |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, res in models:
        p, g, c = res["paired"], res["generation"], res["compiled"]
        note = "".join(f", {k}={v:.3g}" for k, v in case.kwargs)
        lines.append(
            f"| {case.name}{note} | {case.size}×{case.size} | {case.batch} | {case.batch / p.seconds:.4g} | "
            f"{case.reference} | {case.batch / p.ref_seconds:.4g} | {p.ratio:.3g}× | {c.ratio:.3g}× "
            f"({res['compile_backend']}) | {res['eager_over_compiled']:.3g}× | {100 * g.ratio:.3g}% "
            f"| {res['launches_step']} / {res['launches_generation']} "
            f"| {res['launches_per_gd_layer']:.3g} / {res['launches_per_gd_layer_torch']:.3g} / "
            f"{res['launches_per_plain_layer']:.3g} |")
    return "\n".join(lines) + "\n"


def replace_section(path: Path, body: str) -> None:
    """Replace the text between the GPU markers of ``path`` (kept), failing loudly when they are missing."""
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"gpu_bench: {path} needs exactly one {BEGIN} … {END} pair")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{body}{END}", text))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--small", action="store_true", help="tiny sizes and few repetitions (the --cpu plumbing check)")
    p.add_argument("--docs", type=Path, default=None, help="replace the GPU section of this file (CUDA only)")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    p.add_argument("--budget", type=float, default=None, help="seconds per interleaved group (default 3; --small 0.2)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device here; use --device cpu --small for the plumbing check")
    if args.docs is not None and device.type != "cuda":
        raise SystemExit("gpu_bench: --docs takes CUDA results only (use --out for a CPU run)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)
    budget = args.budget if args.budget is not None else (0.2 if args.small else 3.0)
    opts = dict(max_reps=5 if args.small else 21, min_reps=3, budget_s=budget, warmup=1 if args.small else 3)
    timer, start = Timer(device), time.perf_counter()
    layers = [(case, bench_layer(case, device, timer, opts)) for case in layer_cases(args.small)]
    if args.small:  # CPU bf16 is emulated (~1 s a VGG step): one pair per model is enough for the plumbing
        opts.update(max_reps=1, min_reps=1)
    # CPU plumbing: aot_eager captures and differentiates the same graphs as inductor without a C++ build.
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    models = [(case, bench_model(case, device, timer, opts, backend)) for case in model_cases(args.small)]
    report = render(args, device, layers, models, time.perf_counter() - start)
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)
    if args.docs is not None:
        replace_section(args.docs, report)
    return report


if __name__ == "__main__":
    main()
