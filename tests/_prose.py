"""Tests of generated prose (docs/*.md sentences) pin its facts, not its wording."""

from __future__ import annotations

import re

_FACT = re.compile(r"`[^`]+`|[-+]?\d+(?:\.\d+)?")


def facts(text: str) -> list[str]:
    """The numbers and ```code``` names in ``text``, in order: what a generated sentence must state, whatever its
    wording.

    Example:
        >>> facts("`gd_fmnist` 92.90: -0.20 against the paper's 93.1")
        ['`gd_fmnist`', '92.90', '-0.20', '93.1']
    """
    return _FACT.findall(text)
