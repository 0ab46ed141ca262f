"""A newcomer's machine: gdzoo from a wheel built from this repository, in a fresh venv, offline, empty caches.

The wheel is built from a copy of the repository's files (what a clone holds), installed into a new venv
outside the checkout; that venv reuses the test venv's installed dependencies (torch, timm, ...) through
a ``.pth`` line, so gdzoo itself can only come from the wheel. Commands run in an empty folder with an
empty ``HF_HOME``, ``HF_HUB_OFFLINE=1`` and an empty gdzoo cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

from _paths import REPO


def repository_files(repo: Path = REPO) -> list[str]:
    """The files a clone holds (tracked, plus new files git does not ignore), as repository-relative paths."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (repo / f).is_file())


def copy_repository(dest: Path, repo: Path = REPO) -> Path:
    """A copy of the repository's files at ``dest`` (a clone without ``.git``)."""
    for name in repository_files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target)
    return dest


@dataclass
class Newcomer:
    """A fresh venv with gdzoo installed from a wheel, and a copy of the repository (``clone``)."""

    root: Path
    python: Path
    wheel: Path
    clone: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Offline, empty HF and gdzoo caches, one thread; no gdzoo variables of the test's own environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GDZOO_", "HF_", "PYTHONPATH"))}
        env.update(HF_HOME=str(self.root / "hf-home"), HF_HUB_OFFLINE="1", GDZOO_CACHE=str(self.root / "gdzoo-cache"),
                   OMP_NUM_THREADS="1")
        env.update(extra)
        return env

    def run(self, args: list[str], cwd: Path | None = None, timeout: float = 600,
            **env: str) -> subprocess.CompletedProcess:
        """Run ``python ARGS`` in the newcomer's venv, by default in an empty work folder."""
        work = cwd or self.root / "work"
        work.mkdir(exist_ok=True)
        return subprocess.run([str(self.python), *args], cwd=work, env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout)


def make_newcomer(root: Path) -> Newcomer:
    """Build the wheel from a repository copy, make the venv, install the wheel (no deps, no index)."""
    clone = copy_repository(root / "clone")
    build = copy_repository(root / "build-src")
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(build)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("gdzoo-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_test_venv_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(purelib), str(wheel)], check=True,
                   capture_output=True, text=True, timeout=600)
    return Newcomer(root, python, wheel, clone)


def wheel_files(wheel: Path) -> dict[str, int]:
    """``{path inside the wheel: size}``."""
    with zipfile.ZipFile(wheel) as z:
        return {info.filename: info.file_size for info in z.infolist()}


def last_json(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object a program printed on its last stdout line."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
