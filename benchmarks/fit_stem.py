"""Fit GD stems to real ImageNet first-layer filters (SqueezeNet v1.1 conv1, 64x3x3x3): errors per order K.

Reproduces the table of docs/convert.md:

    OMP_NUM_THREADS=1 python benchmarks/fit_stem.py [--data ../shared/data/imagenet_stem]
    OMP_NUM_THREADS=1 python benchmarks/fit_stem.py --separated --kernels 3 --num-bases 16 64 --orders 2 3

Kernel error: ‖W_gd − W‖_F / ‖W‖_F. Output error: ‖y_gd − y_ref‖ / ‖y_ref − bias‖ on 32 held-in
natural-like (1/f) 64x64 images (stride 2, padding 1, as VGG16/SqueezeNet stems), after 200
output-space Adam steps. The 5x5 rows fit the same filters zero-padded to 5x5 (a larger support
for the same responses). ``--separated`` fits the separated combination of eq. (4) instead.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gdzoo.layers import GDConv2d
from gdzoo.layers.fit import fit_gdconv_, natural_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenet_stem"))
    parser.add_argument("--num-bases", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5], choices=[3, 5])
    parser.add_argument("--refine-steps", type=int, default=200)
    parser.add_argument("--separated", action="store_true", help="separated combination λ·β (eq. 4)")
    args = parser.parse_args()
    weight = torch.from_numpy(np.load(Path(args.data) / "squeezenet1_1_conv1_weight.npy"))
    bias = torch.from_numpy(np.load(Path(args.data) / "squeezenet1_1_conv1_bias.npy"))
    images = natural_images(32, 3, 64, seed=0)
    print("| kernel | num_bases | order K | N | kernel rel. error | SVD bound | output rel. error (kernel fit) "
          "| output rel. error (refined) | kernel rel. error (refined) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in args.kernels:
        target = weight if k == 3 else F.pad(weight, (1, 1, 1, 1))
        for b in args.num_bases:
            for order in args.orders:
                torch.manual_seed(0)
                gd = GDConv2d(3, 64, k, stride=2, padding=k // 2, num_bases=b, order=order, separated=args.separated)
                start = time.time()
                kernel_only = fit_gdconv_(gd, target, bias, threads=1)
                gd = GDConv2d(3, 64, k, stride=2, padding=k // 2, num_bases=b, order=order, separated=args.separated)
                refined = fit_gdconv_(gd, target, bias, images=images, refine_steps=args.refine_steps, threads=1)
                print(f"| {k}x{k}{' sep.' if args.separated else ''} | {b} | {order} | {gd.num_kernels} | "
                      f"{kernel_only.kernel_error:.4f} | "
                      f"{kernel_only.subspace_bound:.4f} | {refined.output_error_kernel_fit:.4f} | "
                      f"{refined.output_error:.4f} | {refined.kernel_error:.4f} | {time.time() - start:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
