"""``gdzoo models``: the registered models with parameter counts, input size and pretrained tags."""

from __future__ import annotations

import argparse
import fnmatch

# torch, timm and the models are imported when the command runs, so ``gdzoo --help`` stays fast


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list gdzoo's timm models (params, input size, pretrained tags)",
                       description="Parameter counts are those of timm.create_model(<model>): the model's default "
                                   "num_classes and in_chans (the input_size column's channels).")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter on model names (default: all)")
    p.set_defaults(run=run)


def model_rows(pattern: str = "*") -> list[dict[str, object]]:
    """One row per registered gdzoo model matching ``pattern``; models are built on the meta device."""
    import timm
    import torch

    from ..models.registry import list_gdzoo_models

    rows = []
    for name in list_gdzoo_models():
        if not fnmatch.fnmatch(name, pattern):
            continue
        with torch.device("meta"):
            model = timm.create_model(name)
        cfg = model.pretrained_cfg
        rows.append(
            {
                "model": name,
                "params": sum(p.numel() for p in model.parameters()),
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "input_size": "x".join(str(s) for s in cfg.get("input_size", ())),
                "pretrained": ", ".join(t.split(".", 1)[1] for t in timm.list_pretrained(name)) or "-",
            }
        )
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of ``rows`` (all with the same keys)."""
    if not rows:
        return "no model matches"
    keys = list(rows[0])
    cells = [[f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def run(args: argparse.Namespace) -> int:
    print(format_table(model_rows(args.pattern)))
    return 0
