"""Recipe overrides on the command line: ``--set section.key=value`` and dotted flags ``--section.key value``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["accept_dotted_flags", "split_dotted_flags"]


def split_dotted_flags(extras: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(['optim.lr=0.01', ...], leftovers)`` from ``['--optim.lr', '0.01', '--train.amp=bf16', ...]``."""
    overrides, leftovers = [], []
    i = 0
    while i < len(extras):
        token = extras[i]
        key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if "." in key:
            if "=" in token:
                overrides.append(token[2:])
            elif i + 1 < len(extras) and not extras[i + 1].startswith("--"):
                overrides.append(f"{key}={extras[i + 1]}")
                i += 1
            else:
                overrides.append(f"{key}=true")  # a bare dotted flag switches a boolean on
        else:
            leftovers.append(token)
        i += 1
    return overrides, leftovers


def accept_dotted_flags(parser: argparse.ArgumentParser, dest: str = "dotted_overrides") -> None:
    """Let ``parser`` (a subcommand parser) collect dotted flags into ``args.<dest>`` instead of rejecting them.

    Anything else unknown is still reported as an error, by ``parser``.
    """
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        namespace, extras = original(args, namespace)
        overrides, leftovers = split_dotted_flags(extras)
        if leftovers:
            parser.error(f"unrecognized arguments: {' '.join(leftovers)} (recipe keys go as --section.key=value or "
                         "--set section.key=value)")
        setattr(namespace, dest, [*(getattr(namespace, dest, None) or []), *overrides])
        return namespace, []

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]
