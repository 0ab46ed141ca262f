"""Tests of generated prose (docs/*.md sentences) pin its facts, not its wording."""

from __future__ import annotations

import re

# a number stands alone: not the "1" of "top-1" or "e100" (nor its "-1"), not a piece of another number
_FACT = re.compile(r"`[^`]+`|(?<![\w.+-])[-+]?\d+(?:\.\d+)?")


def facts(text: str) -> list[str]:
    """The numbers and ```code``` names in ``text``, in order: what a generated sentence must state, whatever its
    wording.

    Example:
        >>> facts("`gd_fmnist` 92.90: -0.20 against the paper's 93.1 (test top-1, +0.4)")
        ['`gd_fmnist`', '92.90', '-0.20', '93.1', '+0.4']
    """
    return _FACT.findall(text)
