"""``gdzoo demo``: the published weights at work on real data.

Fashion-MNIST models: their predictions on the first test images, beside the truth, with the accuracy on them.
MoNuSeg U-nets: the predicted and the true mask of a centre crop of a real MoNuSeg image, side by side in a PNG,
with the crop's Dice and IoU. Models without published weights are listed as skipped (``--random-init`` runs
them untrained, labelled so).
"""

from __future__ import annotations

import argparse
import fnmatch
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn as nn

# torch, timm and the models are imported when the command runs, so ``gdzoo --help`` stays fast

__all__ = ["add_parser", "classify", "crop_box", "mask_scores", "run", "segment", "write_mask_pair"]

MAX_IMAGES = 10_000  # the Fashion-MNIST test set
MIN_CROP = 16


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the published weights on real images: Fashion-MNIST predictions, MoNuSeg masks")
    p.add_argument("--models", default="*",
                   help="shell-style patterns of model names, comma-separated (default: all), e.g. 'gd_*,unet5'")
    p.add_argument("--images", type=int, default=8, help="how many Fashion-MNIST test images to classify (the first N)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx .gz files")
    p.add_argument("--monuseg", default=None,
                   help="MoNuSeg folder (images/, masks/); default: $GDZOO_SHARED_DIR/data/nuclei/monuseg2018 or "
                        "../shared/data/nuclei/monuseg2018")
    p.add_argument("--crop", type=int, default=256, help="side of the centre crop of the MoNuSeg image (pixels)")
    p.add_argument("--out", default="runs/demo", help="folder for the mask PNGs (default: runs/demo)")
    p.add_argument("--random-init", action="store_true",
                   help="also run the models without published weights, untrained (their outputs mean nothing)")
    p.set_defaults(run=run)


def classify(model: nn.Module, images: torch.Tensor) -> list[int]:
    """Predicted classes of ``(N, 1, 28, 28)`` uint8 images: scaled to [0, 1], normalised with the model's
    ``pretrained_cfg`` mean/std, resized and channel-repeated to its input size, argmax of the logits."""
    import torch
    import torch.nn.functional as F

    cfg = model.pretrained_cfg
    chans, height, width = cfg["input_size"]
    x = images.float() / 255.0
    if (height, width) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    x = x.expand(-1, chans, -1, -1)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.inference_mode():
        return model((x - mean) / std).argmax(1).tolist()


def segment(model: nn.Module, rgb: np.ndarray) -> np.ndarray:
    """Foreground mask ``(H, W)`` bool of an ``(H, W, 3)`` uint8 image: normalised with the model's mean/std, then
    ``logits > 0`` for one logit, else argmax != 0 (as ``gdzoo predict`` does)."""
    import torch

    from ..data.seg_transforms import normalize

    cfg = model.pretrained_cfg
    x = normalize(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0, cfg["mean"], cfg["std"])
    with torch.inference_mode():
        logits = model(x[None])[0]
    labels = (logits[0] > 0) if logits.shape[0] == 1 else logits.argmax(0) != 0
    return labels.numpy()


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """``(Dice, IoU)`` of two boolean masks (1.0 when both are empty).

    Example:
        >>> import numpy as np
        >>> mask_scores(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
        (0.5, 0.3333333333333333)
    """
    inter, pred_n, true_n = int((pred & truth).sum()), int(pred.sum()), int(truth.sum())
    union = pred_n + true_n - inter
    if union == 0:
        return 1.0, 1.0
    return 2 * inter / (pred_n + true_n), inter / union


def crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the centred ``size`` x ``size`` crop of an image.

    Example:
        >>> crop_box(1000, 1000, 256)
        (372, 372)
    """
    return (height - size) // 2, (width - size) // 2


def write_mask_pair(path: Path, pred: np.ndarray, truth: np.ndarray) -> Path:
    """A grey PNG of ``pred | truth`` side by side (255 = foreground, 0 = background), written atomically."""
    import numpy as np
    from PIL import Image

    from .._io import atomic_write

    pair = np.concatenate([pred, truth], axis=1).astype(np.uint8) * 255
    return atomic_write(path, lambda tmp: Image.fromarray(pair, "L").save(tmp, format="PNG"))


def _demo_data(tag: str | None) -> str | None:
    """Which demo data fits a published ``<model>.<tag>``: 'fmnist', 'monuseg', or None."""
    if tag is None:
        return None
    data = tag.split(".", 1)[1]
    return next((d for d in ("fmnist", "monuseg") if data.startswith(d)), None)


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.images <= MAX_IMAGES:
        raise UserError(f"--images must be between 1 and {MAX_IMAGES} (the Fashion-MNIST test images), "
                        f"got {args.images}")
    if args.crop < MIN_CROP:
        raise UserError(f"--crop must be at least {MIN_CROP} pixels, got {args.crop}")


def _fmnist_part(models: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """Predictions of each published Fashion-MNIST model on the first ``args.images`` test images, as a table."""
    import timm

    from ..data import FMNIST_LABELS, find_fashion_mnist, load_fashion_mnist
    from .models_table import format_table

    try:
        folder = find_fashion_mnist(args.data_dir, ("test",))
        images, labels = load_fashion_mnist("test", folder)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    count = min(args.images, len(images))
    images, truth = images[:count], labels[:count].tolist()
    predictions: dict[str, list[int]] = {}
    for name, tag in models:
        model = timm.create_model(name, pretrained=True).eval()
        predictions[tag] = classify(model, images)
    rows: list[dict[str, object]] = []
    for i in range(count):
        row: dict[str, object] = {"image": str(i), "truth": FMNIST_LABELS[truth[i]]}
        for tag, pred in predictions.items():
            row[tag] = FMNIST_LABELS[pred[i]] + (" *" if pred[i] != truth[i] else "")
        rows.append(row)
    accuracy: dict[str, object] = {"image": "accuracy", "truth": ""}
    for tag, pred in predictions.items():
        right = sum(p == t for p, t in zip(pred, truth))
        accuracy[tag] = f"{right}/{count} = {100 * right / count:.1f} %"
    rows.append(accuracy)
    print(f"Fashion-MNIST: the first {count} test images of {folder}, classified with the published weights "
          "(* marks a wrong class)\n")
    print(format_table(rows), end="\n\n", flush=True)


def _monuseg_part(models: list[tuple[str, str]], args: argparse.Namespace) -> None:
    """Each published MoNuSeg U-net on a centre crop of a MoNuSeg image: Dice/IoU printed, masks PNG written."""
    import numpy as np
    import timm
    from PIL import Image

    from .._io import atomic_write
    from ..data.images import read_image
    from ..data.segmentation import find_segmentation_pairs
    from ..data.shared import find_monuseg, monuseg_candidates

    names = ", ".join(name for name, _ in models)
    if args.monuseg is not None:
        root = Path(args.monuseg)
        if not (root / "images").is_dir() or not (root / "masks").is_dir():
            raise UserError(f"--monuseg {root} does not hold images/ and masks/ (the MoNuSeg layout)")
    else:
        found = find_monuseg()
        if found is None:
            looked = ", ".join(str(p) for p in monuseg_candidates())
            print(f"MoNuSeg not found (looked in {looked}; set GDZOO_SHARED_DIR or pass --monuseg DIR): "
                  f"skipped {names}")
            return
        root = found
    try:
        pair = find_segmentation_pairs(root)[0]
        rgb = read_image(pair.image, 3).as_uint8(channels=3)
        with Image.open(pair.mask) as m:
            truth_full = np.array(m.convert("L")) > 0
    except (OSError, ValueError) as e:  # a missing mask, an unreadable image: name it, no traceback
        raise UserError(f"MoNuSeg in {root} cannot be used: {e}") from None
    height, width = rgb.shape[:2]
    if args.crop > min(height, width):
        raise UserError(f"--crop {args.crop} is larger than the MoNuSeg image {pair.image} ({width}x{height})")
    top, left = crop_box(height, width, args.crop)
    rows, cols = slice(top, top + args.crop), slice(left, left + args.crop)
    crop, truth = np.ascontiguousarray(rgb[rows, cols]), truth_full[rows, cols]
    out = Path(args.out)
    crop_png = atomic_write(out / f"monuseg_{pair.id}_crop.png",
                            lambda tmp: Image.fromarray(crop).save(tmp, format="PNG"))
    print(f"MoNuSeg: {pair.image}, rows {top}:{top + args.crop}, cols {left}:{left + args.crop} -> {crop_png}\n"
          "(the published weights were trained on all 30 MoNuSeg training images, this one included: the scores "
          "show what they learned, not how they generalise; the model cards give cross-validated scores)\n")
    for name, tag in models:
        model = timm.create_model(name, pretrained=True).eval()
        pred = segment(model, crop)
        dice, iou = mask_scores(pred, truth)
        png = write_mask_pair(out / f"{tag}_{pair.id}_masks.png", pred, truth)
        print(f"{tag}: Dice {dice:.3f}, IoU {iou:.3f} on the crop -> {png} (left: predicted mask, right: true mask)",
              flush=True)
    print()


def _random_init_part(names: list[str], args: argparse.Namespace) -> None:
    """Models without published weights, untrained, on Fashion-MNIST-sized inputs: shapes and timings only."""
    import timm
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    for name in names:
        model = timm.create_model(name).eval()
        chans, height, width = model.pretrained_cfg["input_size"]
        x = torch.randn(min(args.images, 8), 1, 28, 28)
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False).expand(-1, chans, -1, -1)
        with torch.inference_mode():
            start = time.perf_counter()
            y = model(x)
            elapsed = time.perf_counter() - start
        print(f"{name} [random init, untrained: its outputs mean nothing]: {tuple(x.shape)} -> {tuple(y.shape)} "
              f"in {elapsed * 1000:.0f} ms", flush=True)


def run(args: argparse.Namespace) -> int:
    from ..models.registry import list_gdzoo_models
    from ..training.inference import published_tag

    _check_args(args)
    all_names = list_gdzoo_models()
    patterns = [p.strip() for p in args.models.split(",") if p.strip()]
    names = [n for n in all_names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names:
        raise UserError(f"--models {args.models!r} matches no gdzoo model; the models are {', '.join(all_names)}")
    shown: dict[str, list[tuple[str, str]]] = {"fmnist": [], "monuseg": []}
    unpublished, other_data = [], []
    for name in names:
        tag = published_tag(name)
        data = _demo_data(tag)
        if data is not None and tag is not None:
            shown[data].append((name, tag))
        elif tag is not None:
            other_data.append(tag)
        else:
            unpublished.append(name)
    if shown["fmnist"]:
        _fmnist_part(shown["fmnist"], args)
    if shown["monuseg"]:
        _monuseg_part(shown["monuseg"], args)
    if other_data:
        print(f"skipped (published weights for data the demo does not load): {', '.join(other_data)}")
    if unpublished and args.random_init:
        _random_init_part(unpublished, args)
    elif unpublished:
        print(f"skipped (no published weights): {', '.join(unpublished)}; --random-init runs them untrained")
    return 0
