"""``gdzoo convert``: a pretrained free-form timm model -> its GD twin (stem fitted), logits checked,
Hub folder written."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="fit a GD stem to a pretrained model's first layer and write weights/<target>.<tag>/",
        description="Example: gdzoo convert vgg16.tv_in1k --to gd_vgg16 --tag tv_in1k  (paper, Table 2)",
    )
    p.add_argument("source", help="timm model (with tag) whose weights are converted, e.g. vgg16.tv_in1k")
    p.add_argument("--to", dest="target", required=True, help="gdzoo model with a GD stem, e.g. gd_vgg16")
    p.add_argument("--tag", required=True, help="tag of the written weights: <root>/<target>.<tag>/")
    p.add_argument("--checkpoint", default=None,
                   help="local weights instead of the Hub: .safetensors (timm or torchvision layout, through timm's "
                        "loader) or a training checkpoint / state dict .pth (read with weights_only=True)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the checkpoint's head (default: timm's)")
    p.add_argument("--img-size", type=int, default=None, help="check-image size (default: the model's input size)")
    p.add_argument("--num-images", type=int, default=16, help="natural-like check / refinement images")
    p.add_argument("--refine-steps", type=int, default=200, help="output-space Adam steps on the stem (0: none)")
    p.add_argument("--restarts", type=int, default=8, help="kernel-space fit restarts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="weights", help="folder receiving <target>.<tag>/")
    p.add_argument("--org", default=None, help="Hub organisation in config.json (default: $GDZOO_HF_ORG or 'gdzoo')")
    p.add_argument("--max-logit-error", type=float, default=None,
                   help="fail (exit 1, nothing written) if the logits' relative error exceeds this")
    p.add_argument("--report", default=None, help="also write the conversion report as JSON here")
    p.set_defaults(run=run)


def load_source(name: str, checkpoint: str | None = None, num_classes: int | None = None):
    """The pretrained source model: from the Hub / HF cache, or from a local checkpoint."""
    import timm

    from ..training.checkpoint import model_state_from_file

    kwargs = {"num_classes": num_classes} if num_classes else {}
    if checkpoint is None:
        return timm.create_model(name, pretrained=True, **kwargs)
    path = Path(checkpoint)
    if not path.is_file():
        raise SystemExit(f"gdzoo convert: --checkpoint {checkpoint} does not exist")
    if path.suffix == ".safetensors":  # timm's loader: applies the model's filter (torchvision layouts)
        overlay = {"file": str(path), **({"num_classes": num_classes} if num_classes else {})}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    model = timm.create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(model_state_from_file(path))
    return model


def run(args: argparse.Namespace) -> int:
    from ..hub.convert import convert_model, export_converted

    source = load_source(args.source, args.checkpoint, args.num_classes)
    # this process's choice (gdzoo.threads): one intra-op thread for the kernel-space fit's tiny tensors
    model, report = convert_model(
        source, args.target, source_name=args.source, num_images=args.num_images, img_size=args.img_size,
        refine_steps=args.refine_steps, seed=args.seed, fit_options={"restarts": args.restarts, "threads": 1},
    )
    print(report.summary())
    if args.report:
        from .._io import atomic_write_text

        atomic_write_text(args.report, json.dumps(report.to_dict(), indent=2))
    if args.max_logit_error is not None and report.logit_error > args.max_logit_error:
        print(f"gdzoo convert: logits rel. error {report.logit_error:.4f} > --max-logit-error "
              f"{args.max_logit_error}; nothing written", file=sys.stderr)
        return 1
    command = ("gdzoo convert " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["convert"]
               else None)
    folder = export_converted(model, report, args.tag, args.root, org=args.org, command=command,
                              license=(source.pretrained_cfg or {}).get("license"))
    print(f"wrote {folder.path} ({folder.repo_id(args.org)})")
    return 0
