"""Hub folders: ``weights/<model>.<tag>/`` holds exactly one Hub model repo (config, weights, card)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from timm.models import split_model_name_tag

from .._io import sha256_file
from ..models.weights_files import REPO_FILES, WEIGHTS_FILE
from ..models.weights_source import default_org

__all__ = ["HubFolder", "REPO_FILES", "WEIGHTS_FILE", "default_org", "find_hub_folders"]

@dataclass(frozen=True)
class HubFolder:
    """A ``<model>.<tag>`` folder and the Hub repo it mirrors."""

    path: Path

    @classmethod
    def open(cls, path: str | os.PathLike) -> HubFolder:
        """Check the folder name is ``<model>.<tag>`` and the three repo files exist."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a folder: expected weights/<model>.<tag>/ with {', '.join(REPO_FILES)}")
        if path.name.count(".") != 1 or path.name.startswith(".") or path.name.endswith("."):
            raise ValueError(f"{path.name!r} is not a '<model>.<tag>' folder name (e.g. gd_fmnist.fmnist)")
        missing = [f for f in REPO_FILES if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lacks {', '.join(missing)}; a Hub folder holds {', '.join(REPO_FILES)}")
        return cls(path)

    @property
    def model_name(self) -> str:
        return split_model_name_tag(self.path.name)[0]

    @property
    def tag(self) -> str:
        return split_model_name_tag(self.path.name)[1]

    def repo_id(self, org: str | None = None) -> str:
        """``<org>/<model>.<tag>``, the id timm's ``hf_hub_id`` uses."""
        return f"{org or default_org()}/{self.path.name}"

    def files(self) -> list[Path]:
        """Every file of the repo, sorted (hidden files excluded)."""
        return sorted(p for p in self.path.rglob("*") if p.is_file() and not p.name.startswith("."))

    def file_hashes(self) -> dict[str, str]:
        """``{relative path: sha256}`` for every file."""
        return {p.relative_to(self.path).as_posix(): sha256_file(p) for p in self.files()}

    def commit_hash(self, hashes: dict[str, str] | None = None) -> str:
        """A deterministic 40-hex revision id for the folder's content (used as the cached commit)."""
        hashes = hashes or self.file_hashes()
        digest = hashlib.sha1()
        for name, sha in sorted(hashes.items()):
            digest.update(f"{name}\0{sha}\n".encode())
        return digest.hexdigest()


def find_hub_folders(root: str | os.PathLike = "weights") -> list[HubFolder]:
    """Every ``<model>.<tag>`` folder under ``root`` that holds a complete repo."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [HubFolder.open(p) for p in sorted(root.iterdir()) if p.is_dir() and "." in p.name]
