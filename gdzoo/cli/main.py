"""``gdzoo`` entry point: parses the subcommand and hands over to its module.

Building the parser imports no torch, timm or gdzoo.models (``gdzoo --help`` and usage errors answer at once):
the ``*_cmd`` modules import those inside their ``run()``, and :func:`main` imports gdzoo.models before a command
runs. ``tests/test_cli_startup.py`` keeps it so.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import UserError
from . import convert_cmd, demo, eval_cmd, export_cmd, hub_cmd, models_table, predict_cmd, train_cmd

SUBCOMMANDS = (models_table, demo, hub_cmd, convert_cmd, train_cmd, eval_cmd, predict_cmd, export_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdzoo",
        description="Fully trainable Gaussian-derivative convolutions (ICIP 2022) and their timm model zoo.",
    )
    parser.add_argument("--version", action="version", version=f"gdzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    _add_debug_flag(parser, top=True)
    return parser


DEBUG_ENV = "GDZOO_DEBUG"


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``--debug`` on the top-level parser and on every subcommand's (before or after the command)."""
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help=f"print the traceback of an error (also {DEBUG_ENV}=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_debug_flag(child)


def _debug(args: argparse.Namespace) -> bool:
    from_env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return bool(getattr(args, "debug", False)) or from_env


def report_error(command: str | None, error: BaseException, debug: bool = False) -> int:
    """Print ``error`` as one line ``gdzoo <command>: <message>`` on stderr (after its traceback when ``debug``);
    return 2."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    message = " ".join(str(error).split())  # one line, whatever the message holds
    print(f"gdzoo{' ' + command if command else ''}: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        from .. import models  # noqa: F401  (torch, timm; registers gdzoo's models, which every command may build)

        return int(args.run(args) or 0)
    except UserError as e:  # a file or value the user can fix: one line, no traceback (unless --debug)
        return report_error(args.command, e, _debug(args))


if __name__ == "__main__":
    sys.exit(main())
