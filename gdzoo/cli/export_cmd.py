"""``gdzoo export``: a trained GD model -> ONNX / torch.export / plain-twin safetensors, checked against eager."""

from __future__ import annotations

import argparse

FORMATS = ("onnx", "pt2", "safetensors")  # gdzoo.deploy.FORMATS (not imported here: --help stays torch-free)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="reparameterise a GD model to plain convolutions, export it (onnx, pt2, safetensors) and verify the file",
        description="Example: gdzoo export gd_unet.monuseg -o gd_unet.onnx. The written file is run back (onnxruntime, "
        "torch.export.load, or the plain twin architecture) on real inputs and compared with the eager GD model; the "
        "numbers are printed and saved as <file>.verification.json, and the command exits 1 when they exceed the "
        "tolerance.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="model with tag (published weights, e.g. gd_unet.monuseg), or a name with --checkpoint")
    p.add_argument("-o", "--output", required=True, help="file to write (its suffix gives the format by default)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="onnx (onnxruntime), pt2 (torch.export), or safetensors (weights of the plain-conv twin, "
                        "e.g. gd_vgg16 -> timm vgg16); default: the output's suffix")
    p.add_argument("--checkpoint", default=None, help="a gdzoo run folder, best.safetensors / last.pth, or Hub folder")
    p.add_argument("--pretrained", action="store_true",
                   help="weights timm fetches or derives for a tag that is not shipped (e.g. gd_vgg16.tv_in1k)")
    p.add_argument("--random-init", action="store_true", help="untrained weights, on purpose (e.g. to try the export)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="input size of the export and its check (default: the model's pretrained_cfg input size)")
    p.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: batch 1)")
    p.add_argument("--half", action="store_true", help="float16 weights and inputs (checked with tolerance 1e-2)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |Δ| / max |output| allowed (default 1e-5 in float32, 1e-2 with --half)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST or MoNuSeg folder for the check inputs")
    p.add_argument("--num-images", type=int, default=10, help="inputs the check runs on")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy import export
    from ..errors import UserError

    if args.model is None and args.checkpoint is None:
        raise UserError("give a model (e.g. gd_unet.monuseg) or --checkpoint RUN")
    result = export(
        args.model, args.output, args.format, checkpoint=args.checkpoint, pretrained=args.pretrained,
        random_init=args.random_init,
        opset=args.opset, input_size=tuple(args.input_size) if args.input_size else None,
        dynamic_batch=args.dynamic_batch, half=args.half, tolerance=args.tolerance, data_dir=args.data_dir,
        num_images=args.num_images,
    )
    print(result.summary(), flush=True)
    return 0 if result.passed else 1
