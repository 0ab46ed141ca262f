"""Build hook: ship the published ``weights/<model>.<tag>/`` folders inside the package as ``gdzoo/_weights/``.

Everything else is in pyproject.toml. Only the folders named in ``gdzoo/models/published_weights.json``
are copied, so local exports never leak into a wheel. Editable installs read ``weights/`` in place.
"""

import importlib.util
import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "gdzoo" / "models" / "published_weights.json"


def _repo_files() -> tuple:
    """``REPO_FILES`` of ``gdzoo/models/weights_files.py`` (it imports nothing: no gdzoo or torch at build time)."""
    path = ROOT / "gdzoo" / "models" / "weights_files.py"
    spec = importlib.util.spec_from_file_location("_gdzoo_weights_files", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.REPO_FILES


HUB_FILES = _repo_files()


class BuildPyWithWeights(build_py):
    """``build_py`` that also copies the published weights folders into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "gdzoo" / "_weights"
        for name in json.loads(MANIFEST.read_text(encoding="utf-8")):
            source = ROOT / "weights" / name
            missing = [f for f in HUB_FILES if not (source / f).is_file()]
            if missing:
                raise FileNotFoundError(f"published weights folder {source} lacks {missing}: cannot build gdzoo")
            (target / name).mkdir(parents=True, exist_ok=True)
            for f in HUB_FILES:
                shutil.copyfile(source / f, target / name / f)


setup(cmdclass={"build_py": BuildPyWithWeights})
