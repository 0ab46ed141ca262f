"""``gdzoo demo``: build every gdzoo model and run it on real Fashion-MNIST test images."""

from __future__ import annotations

import argparse
import time

from .models_table import format_table

# torch, timm and the models are imported when the command runs, so ``gdzoo --help`` stays fast


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="forward every model on real Fashion-MNIST images; print shapes and timings")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx .gz files")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--models", default="*", help="shell-style filter on model names")
    p.set_defaults(run=run)


def _images_for(images: torch.Tensor, input_size: tuple[int, int, int]) -> torch.Tensor:
    """Normalised Fashion-MNIST images resized / channel-replicated to ``input_size``."""
    import torch.nn.functional as F

    from ..data import FMNIST_MEAN, FMNIST_STD
    chans, height, width = input_size
    x = (images.float() / 255.0 - FMNIST_MEAN[0]) / FMNIST_STD[0]
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.expand(-1, chans, -1, -1).contiguous()


def run(args: argparse.Namespace) -> int:
    import timm
    import torch

    from ..data import load_fashion_mnist
    from ..models.registry import list_gdzoo_models

    images, labels = load_fashion_mnist("test", args.data_dir)
    batch = images[: args.batch_size]
    torch.manual_seed(0)
    rows = []
    for name in list_gdzoo_models(args.models if args.models != "*" else ""):
        model = timm.create_model(name).eval()
        input_size = tuple(model.pretrained_cfg["input_size"])
        x = _images_for(batch, input_size)
        with torch.inference_mode():
            start = time.perf_counter()
            y = model(x)
            elapsed = time.perf_counter() - start
        rows.append(
            {
                "model": name,
                "params": sum(p.numel() for p in model.parameters()),
                "input": "x".join(map(str, x.shape)),
                "output": "x".join(map(str, y.shape)),
                "ms/img": f"{1000 * elapsed / len(x):.1f}",
            }
        )
        print(f"{name}: {tuple(x.shape)} -> {tuple(y.shape)} in {elapsed * 1000:.0f} ms", flush=True)
    print(f"\nFashion-MNIST test images {tuple(batch.shape)}, labels {labels[: len(batch)].tolist()}\n")
    print(format_table(rows))
    return 0
