"""The examples in benchmarks/ docstrings run (pytest's --doctest-modules collects only gdzoo/ and tests/)."""

from __future__ import annotations

import doctest
import importlib
import sys

import pytest

from _paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

WITH_EXAMPLES = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if ">>>" in p.read_text())


def test_some_benchmark_modules_have_examples() -> None:
    assert {"_cells", "_runs", "scale_generalisation"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_benchmark_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0, result
