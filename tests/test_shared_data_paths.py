"""Tests needing the real data of ``../shared`` find it through ``GDZOO_SHARED_DIR`` on a clone elsewhere, and
their skip reason says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _paths import REPO

SHOW = ("import _paths; print(_paths.MONUSEG); print(_paths.IMAGENET_STEM); "
        "print(_paths.missing_data('MoNuSeg images', _paths.MONUSEG))")


def _paths_in(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "GDZOO_SHARED_DIR"}
    if env_value is not None:
        env["GDZOO_SHARED_DIR"] = env_value
    proc = subprocess.run([sys.executable, "-c", SHOW], env=env, cwd=REPO / "tests", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_default_is_shared_beside_the_repository() -> None:
    monuseg, stem, reason = _paths_in(None)
    assert Path(monuseg) == REPO.parent / "shared" / "data" / "nuclei" / "monuseg2018"
    assert Path(stem) == REPO.parent / "shared" / "data" / "imagenet_stem"
    assert "../shared beside the repository" in reason and "set GDZOO_SHARED_DIR" in reason


def test_gdzoo_shared_dir_points_elsewhere(tmp_path: Path) -> None:
    monuseg, stem, reason = _paths_in(str(tmp_path))
    assert Path(monuseg) == tmp_path.resolve() / "data" / "nuclei" / "monuseg2018"
    assert Path(stem) == tmp_path.resolve() / "data" / "imagenet_stem"
    assert f"GDZOO_SHARED_DIR={tmp_path}" in reason and "not found at" in reason
