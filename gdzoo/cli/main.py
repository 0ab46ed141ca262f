"""``gdzoo`` entry point: parses the subcommand and hands over to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import convert_cmd, demo, eval_cmd, hub_cmd, models_table, predict_cmd, train_cmd

SUBCOMMANDS = (models_table, demo, hub_cmd, convert_cmd, train_cmd, eval_cmd, predict_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdzoo",
        description="Fully trainable Gaussian-derivative convolutions (ICIP 2022) and their timm model zoo.",
    )
    parser.add_argument("--version", action="version", version=f"gdzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
