#!/usr/bin/env python
"""What was tried beyond the paper's protocol for Table 1: the same cells with one training change each.

Each variant adds the same ``--set`` overrides to every column's Table-1 cell (same recipe, split,
seed, epochs and model selection as ``benchmarks/table1.py``), so a variant changes the training,
never the comparison between columns. Results go to ``results/table1_variants/<variant>/`` and the
side-by-side table to ``docs/table1_variants.md``; the protocol's own numbers are read from
``results/table1/``. Resumable and skip-finished like the main grid.

Usage::

    python benchmarks/table1_variants.py                                   # every variant at 10000 samples
    python benchmarks/table1_variants.py --variants augment --models gd_fmnist rfnn_fmnist
    python benchmarks/table1_variants.py --stop-at 05:00 --kill-at 05:15   # UTC deadlines
    python benchmarks/table1_variants.py --table-only                      # regenerate the doc
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys

from _runs import ROOT, Log, run_queue, run_training
from table1 import (
    FULL,
    GD_MODELS,
    MODELS,
    PAPER,
    PAPER_NAMES,
    cell_name,
    collect_result,
    load_results,
    margins,
    row_means,
    seeds_for,
    train_args,
)

RESULTS = ROOT / "results" / "table1_variants"
RUNS = ROOT / "runs" / "table1_variants"
DOC = ROOT / "docs" / "table1_variants.md"

# Each variant: (what it changes, the overrides added to every column's cell).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "augment": (
        "training augmentation: random horizontal flip (p = 0.5) and a random resized crop back to 28×28 "
        "(area 80–100 %, aspect 0.9–1.11), timm's transforms",
        ["augment.enabled=true", "augment.hflip=0.5", "augment.scale=[0.8,1.0]", "augment.ratio=[0.9,1.1111]"],
    ),
    "weight_decay": (
        "decoupled weight decay: AdamW with weight_decay 0.05 (lr, schedule and everything else unchanged)",
        ["optim.opt=adamw", "optim.weight_decay=0.05"],
    ),
}
DEFAULT_SIZES = [10000]


def variant_args(variant: str, model: str, n: int, seed: int) -> list[str]:
    """The Table-1 cell's ``gdzoo train`` arguments plus the variant's overrides, under its own run name."""
    if not 0 < n <= FULL:
        raise ValueError(f"train samples must be in 1..{FULL}, got {n}")
    args = train_args(model, n, seed)
    if "--export" in args:  # a variant never replaces the published weights
        i = args.index("--export")
        del args[i:i + 3]  # --export --export-tag <tag>
    args[args.index("--name") + 1] = f"table1_variants/{variant}/{cell_name(model, n, seed)}"
    for override in VARIANTS[variant][1]:
        args += ["--set", override]
    return args


def run_cell(variant: str, model: str, n: int, seed: int, log: Log, threads: int, kill_at: dt.datetime | None) -> str:
    name = cell_name(model, n, seed)
    run_dir = RUNS / variant / name
    args = variant_args(variant, model, n, seed)
    status, wall = run_training(args, run_dir, f"{variant}/{name}", log, threads, kill_at)
    if status != "done":
        return status
    result = collect_result(model, n, seed, run_dir, wall, threads)
    result.update(variant=variant, command=shlex.join(["gdzoo", *args]))
    out = RESULTS / variant / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"done   {variant}/{name}: test top1 {result['test_top1']:.2f}, val top1 {result['val_top1']}")
    return "done"


def load_variants() -> dict[str, dict[tuple[str, int], list[dict]]]:
    """Each variant's result records by (model, train samples)."""
    return {v: load_results(RESULTS / v) for v in VARIANTS}


def sizes_of(variants: dict[str, dict]) -> list[int]:
    return sorted({n for cells in variants.values() for (_, n) in cells})


def summary_lines(protocol: dict[tuple[str, int], list[dict]]) -> list[str]:
    """Bullets for docs/table1.md: per variant and size, each column's test top-1 (change against the ``protocol``
    cells of table1.load_results) and the GD margins."""
    variants = load_variants()
    lines = []
    for v, cells in variants.items():
        for n in sizes_of(variants):
            means, base_means = row_means(cells, n), row_means(protocol, n)
            if not means:
                continue
            changes = ", ".join(f"{PAPER_NAMES[m]} {means[m]:.2f} ({means[m] - base_means[m]:+.2f})" if m in base_means
                                else f"{PAPER_NAMES[m]} {means[m]:.2f}" for m in means)
            missing = [PAPER_NAMES[m] for m in MODELS if m not in means]
            line = f"- `{v}` at {n}: {changes}" + (f"; not run yet: {', '.join(missing)}" if missing else "")
            after, before = margins(means), margins(base_means)
            if after:
                line += ". GD margins over the best baseline: " + ", ".join(
                    f"{PAPER_NAMES[m]} {after[m]:+.2f}"
                    + (f" (protocol {before[m]:+.2f})" if m in before else "") for m in after)
                line += f" ({sum(d > 0 for d in after.values())} of {len(after)} GD columns ahead)"
            if n == FULL and "gd_fmnist" in means:
                line += f". `gd_fmnist` against the 93.1 target: {means['gd_fmnist'] - PAPER[FULL]['gd_fmnist']:+.2f}"
            lines.append(line + ".")
    return lines or ["- No variant run has finished yet."]


def write_doc(log: Log | None = None) -> None:
    variants = load_variants()
    rows = {"protocol (docs/table1.md)": load_results(), **variants}
    lines = [
        "# Table 1: what was tried beyond the paper's protocol",
        "",
        "<!-- Generated by `python benchmarks/table1_variants.py --table-only`; edit the script, not this file. -->",
        "",
        "Each variant adds one training change to every column's Table-1 cell and keeps everything else "
        "(recipe, training subset, validation split, seed, epochs, and the selection: best validation top-1 below "
        "60000 samples, the last epoch at 60000; see [table1.md](table1.md), \"Protocol\"). A variant's run never "
        "replaces the published weights. Test top-1 (%) on the 10,000 test images; a cell's value is the mean "
        "of its runs. \"margin\" is the GD column minus the best baseline in the same row (Free-Form, RFNN and, where "
        "it ran, DAU-ConvNet).",
        "",
        "Variants:",
        "",
    ]
    lines += [f"- `{v}`: {desc}. Overrides: {', '.join(f'`--set {o}`' for o in overrides)}."
              for v, (desc, overrides) in VARIANTS.items()]
    for n in sizes_of(variants):
        lines += ["",
                  f"## {n} training samples (seed{'s' if len(seeds_for(n)) > 1 else ''} "
                  f"{', '.join(map(str, seeds_for(n)))})", "",
                  "| training | " + " | ".join(f"{PAPER_NAMES[m]} (`{m}`)" for m in MODELS) + " | "
                  + " | ".join(f"`{m}` margin" for m in GD_MODELS) + " |",
                  "|---|" + "---:|" * (len(MODELS) + len(GD_MODELS))]
        for label, cells in rows.items():
            means = row_means(cells, n)
            if not means:
                continue
            gaps = margins(means)
            row = [f"{means[m]:.2f}" if m in means else "not run yet" for m in MODELS]
            row += [f"{gaps[m]:+.2f}" if m in gaps else "—" for m in GD_MODELS]
            lines.append(f"| {label if label.startswith('protocol') else f'`{label}`'} | " + " | ".join(row) + " |")
    if not sizes_of(variants):
        lines += ["", "No variant run has finished yet."]
    lines += ["", "## Commands", "", "```bash",
              "python benchmarks/table1_variants.py               # every variant, every column, at 10000 samples "
              "(resumable)",
              "python benchmarks/table1_variants.py --table-only  # regenerate this file", "```", "", "One cell, e.g.:",
              "", "```bash"]
    lines += [shlex.join(["gdzoo", *variant_args(v, "gd_fmnist", DEFAULT_SIZES[0], 0)]) for v in VARIANTS]
    lines += ["```", ""]
    DOC.write_text("\n".join(lines))
    if log:
        log(f"wrote {DOC.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="variants to run (default: all)")
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES,
                   help=f"training sizes, up to {FULL} (default: {DEFAULT_SIZES})")
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS, help="columns to run (default: all)")
    p.add_argument("--stop-at", help="HH:MM UTC: launch no new cell after this time")
    p.add_argument("--kill-at", help="HH:MM UTC: stop the running cell at this time (it resumes next time)")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per training process (default 1)")
    p.add_argument("--table-only", action="store_true", help="only regenerate docs/table1_variants.md")
    args = p.parse_args(argv)
    log = Log(RUNS / "grid.log")
    if args.table_only:
        write_doc(log)
        return 0
    bad = [n for n in args.sizes if not 0 < n <= FULL]
    if bad:
        p.error(f"--sizes must be in 1..{FULL}, got {bad}")
    todo = [(v, m, n, s) for v in args.variants for n in sorted(args.sizes) for s in seeds_for(n) for m in MODELS
            if m in args.models and not (RESULTS / v / f"{cell_name(m, n, s)}.json").is_file()]
    return run_queue(todo, lambda cell, kill_at: run_cell(*cell, log, args.threads, kill_at), lambda: write_doc(log),
                     log, args.stop_at, args.kill_at)


if __name__ == "__main__":
    sys.exit(main())
