#!/usr/bin/env python
"""Latency of deployed GD models (issue #35): eager GD, eager reparameterised, onnxruntime, and the plain twin.

For each model: the eager GD model (kernels cached in eval mode), the eager reparameterised model (plain
``nn.Conv2d``), its ONNX export under onnxruntime, and the plain twin with the same kernel sizes (ff_fmnist with
7×7 kernels, unet5, unet5 with 7×7, vgg16; random weights: only time matters) under onnxruntime. One intra-op
thread everywhere; the variants run interleaved (one call of each per round, after a warm-up round) and the table
gives each one's median over rounds, and its ratio to the plain twin under onnxruntime.

Usage::

    python benchmarks/export_bench.py                    # the four models, 15 rounds
    python benchmarks/export_bench.py --rounds 5 --models gd_fmnist gd_unet
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import timm
from timm.utils.model import reparameterize_model

import gdzoo  # noqa: F401  (registers the models)
from gdzoo.deploy.formats import ExportSpec, write_artefact
from gdzoo.deploy.twins import PLAIN_TWINS

# model -> input (N, C, H, W): the fmnist batch of training; one tile for the U-nets; VGG small (loaded machine)
SIZES = {
    "gd_fmnist": (64, 1, 28, 28),
    "gd_unet": (1, 3, 256, 256),
    "gd_unet_k7b2": (1, 3, 256, 256),
    "gd_vgg16": (1, 3, 64, 64),
}


def onnx_session(model: torch.nn.Module, x: torch.Tensor, folder: Path, name: str):
    """Export ``model`` (already plain) to ONNX and open it with onnxruntime, one thread."""
    import onnxruntime as ort

    path = folder / f"{name}.onnx"
    write_artefact("onnx", model, ExportSpec(x, False, None, None), path, name)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.numpy())}
    return lambda: session.run(None, feed)


def torch_call(model: torch.nn.Module, x: torch.Tensor):
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def bench(name: str, rounds: int, folder: Path) -> list[tuple[str, float]]:
    shape = SIZES[name]
    torch.manual_seed(0)
    gd = timm.create_model(name).eval()
    plain = reparameterize_model(copy.deepcopy(gd)).eval()
    twin_name, twin_kwargs = PLAIN_TWINS[name]
    twin = timm.create_model(twin_name, **twin_kwargs).eval()
    x = torch.randn(*shape)
    twin_label = twin_name + "".join(f"({k}={v})" for k, v in twin_kwargs.items())  # no spaces: the table splits on one
    variants = {
        f"{name} eager GD": torch_call(gd, x),
        f"{name} eager reparameterised": torch_call(plain, x),
        f"{name} onnxruntime": onnx_session(plain, x, folder, name),
        f"{twin_label} onnxruntime (plain twin)": onnx_session(twin, x, folder, twin_name),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 1):
        order = list(variants) if r % 2 else list(reversed(variants))  # alternate the order: no position favoured
        for key in order:
            start = time.perf_counter()
            variants[key]()
            if r:  # round 0 warms up
                times[key].append(time.perf_counter() - start)
    return [(key, statistics.median(ts)) for key, ts in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import onnxruntime

    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {machine}, "
          f"1 thread, median of {args.rounds} interleaved rounds\n")
    print("| model | variant | input | latency | ratio to the plain twin (onnxruntime) |")
    print("|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows = bench(name, args.rounds, Path(tmp))
            reference = rows[-1][1]
            for key, seconds in rows:
                model, variant = key.split(" ", 1)
                print(f"| {model} | {variant} | {'x'.join(map(str, SIZES[name]))} | {seconds * 1e3:.3g} ms | "
                      f"{seconds / reference:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
