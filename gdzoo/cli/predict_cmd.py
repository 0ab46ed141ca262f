"""``gdzoo predict``: run a model on image files; class predictions to CSV, or tiled segmentation masks + overlays."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="run a model on image files (classification -> CSV; segmentation -> tiled masks and overlays)",
        description="Classification models write predictions.csv (top-k classes and probabilities). Segmentation "
        "models run tiled, overlapping inference on images of any size and write <name>_mask.png and "
        "<name>_overlay.png.",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--model", help="timm model name (default: the run's model)")
    p.add_argument("--checkpoint", help="run folder, best.safetensors / last.pth, or a weights/<model>.<tag>/ folder")
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--output", "-o", default="predictions", help="output folder")
    p.add_argument("--tile", type=int, default=None, help="segmentation tile size (default: the model's input size)")
    p.add_argument("--overlap", type=int, default=32, help="overlap between segmentation tiles in pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)


def _image_files(inputs: list[str]) -> list[Path]:
    from ..data.classification import IMG_EXTENSIONS

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return files


def _classify(model, files, args, device, classes) -> Path:  # type: ignore[no-untyped-def]
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..data.classification import pil_mode
    from ..data.transforms import build_transform, resolve_data_config_for

    data_config = resolve_data_config_for(model)
    transform, mode = build_transform(data_config, is_training=False), pil_mode(data_config["input_size"][0])
    k = min(args.topk, len(classes))
    out = Path(args.output) / "predictions.csv"
    rows = []
    with torch.no_grad():
        for start in tqdm(range(0, len(files), args.batch_size), desc="predict", disable=None):
            chunk = files[start : start + args.batch_size]
            batch = []
            for path in chunk:
                with Image.open(path) as img:
                    batch.append(transform(img.convert(mode)))
            probs = model(torch.stack(batch).to(device)).float().softmax(1).cpu()
            top = probs.topk(k, dim=1)
            for path, p, i in zip(chunk, top.values, top.indices):
                rows.append([str(path), classes[i[0]], f"{p[0]:.4f}", "; ".join(f"{classes[j]}:{q:.4f}" for q, j in zip(p.tolist(), i.tolist()))])
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prediction", "probability", f"top{k}"])
        writer.writerows(rows)
    return out


def _segment(model, files, args, device) -> list[Path]:  # type: ignore[no-untyped-def]
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..data.classification import pil_mode
    from ..data.seg_transforms import normalize
    from ..data.transforms import resolve_data_config_for
    from ..training.tiling import axis_origins, predict_tiled

    data_config = resolve_data_config_for(model)
    chans, tile = data_config["input_size"][0], args.tile or data_config["input_size"][-1]
    out_dir, written = Path(args.output), []
    for path in files:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            array = np.array(img.convert(pil_mode(chans)))
        image = torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1).float() / 255.0
        stride = tile - args.overlap
        count = len(axis_origins(max(image.shape[1], tile), tile, stride)) * len(axis_origins(max(image.shape[2], tile), tile, stride))
        with tqdm(total=count, desc=path.name, unit="tile", disable=None, leave=False) as bar:
            logits = predict_tiled(model, normalize(image, data_config["mean"], data_config["std"]), tile, args.overlap,
                                   args.batch_size, device, bar.update)
        labels = (logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)
        levels = max(logits.shape[0] - 1, 1)
        mask = (labels * (255 // levels)).to(torch.uint8).numpy()
        Image.fromarray(mask).save(out_dir / f"{path.stem}_mask.png")
        overlay = np.array(rgb).astype(np.float32)
        red = np.zeros_like(overlay)
        red[..., 0] = 255
        alpha = 0.45 * (labels.numpy() > 0)[..., None]
        Image.fromarray((overlay * (1 - alpha) + red * alpha).astype(np.uint8)).save(out_dir / f"{path.stem}_overlay.png")
        written += [out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"]
    return written


def run(args: argparse.Namespace) -> int:
    from ..training.distributed import resolve_device
    from ..training.inference import class_names_for, load_trained_model
    from ..training.modeling import is_segmentation

    try:
        files = _image_files(args.inputs)
        model, recipe = load_trained_model(args.model, args.checkpoint, args.pretrained, args.num_classes)
    except (FileNotFoundError, ValueError) as e:
        print(f"gdzoo predict: {e}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    model.to(device).eval()
    Path(args.output).mkdir(parents=True, exist_ok=True)
    if is_segmentation(model, recipe.model.task if recipe else "auto"):
        written = _segment(model, files, args, device)
        print(f"wrote {len(written) // 2} masks and overlays to {args.output}")
    else:
        classes = class_names_for(model, args.checkpoint, getattr(model, "num_classes", 0) or 0)
        out = _classify(model, files, args, device, classes)
        print(f"wrote {len(files)} predictions to {out}")
    return 0
