"""Seed and check the Hugging Face cache from Hub folders, for offline nodes (``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from huggingface_hub import constants as hf_constants
from safetensors import safe_open

from .._io import atomic_write, atomic_write_text, sha256_file
from .layout import WEIGHTS_FILE, HubFolder

__all__ = ["cache_repo_dir", "seed_cache", "verify_cached_repo", "verify_folder"]


def cache_repo_dir(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models--<org>--<name>``, the layout huggingface_hub reads."""
    cache = Path(cache_dir or hf_constants.HF_HUB_CACHE)
    return cache / ("models--" + repo_id.replace("/", "--"))


def seed_cache(folder: HubFolder, org: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write ``folder`` into the cache as revision ``main`` (blobs named by sha256, snapshot symlinks).

    Returns the snapshot folder. Idempotent; blobs are copied atomically.
    """
    repo_dir = cache_repo_dir(folder.repo_id(org), cache_dir)
    hashes = folder.file_hashes()
    commit = folder.commit_hash(hashes)
    snapshot = repo_dir / "snapshots" / commit
    for name, sha in hashes.items():
        blob = repo_dir / "blobs" / sha
        if not blob.is_file() or sha256_file(blob) != sha:
            atomic_write(blob, lambda tmp, src=folder.path / name: shutil.copyfile(src, tmp))
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    atomic_write_text(repo_dir / "refs" / "main", commit)
    return snapshot


def verify_cached_repo(repo_id: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Problems in the cached ``main`` snapshot of ``repo_id``: every blob's sha256 must equal its name."""
    repo_dir = cache_repo_dir(repo_id, cache_dir)
    ref = repo_dir / "refs" / "main"
    if not ref.is_file():
        return [f"{repo_id}: not in the cache {repo_dir.parent} (run `gdzoo hub seed`)"]
    snapshot = repo_dir / "snapshots" / ref.read_text().strip()
    problems = []
    for link in sorted(p for p in snapshot.rglob("*") if p.is_symlink() or p.is_file()):
        target = link.resolve()
        if not target.is_file():
            problems.append(f"{repo_id}: {link.name} points to a missing blob")
        elif len(target.name) == 64 and sha256_file(target) != target.name:
            problems.append(f"{repo_id}: {link.name} is corrupted (sha256 differs from its blob name {target.name})")
    return problems


def verify_folder(folder: HubFolder, org: str | None = None) -> list[str]:
    """Problems in a Hub folder: config/weights/card consistency with its name and its architecture."""
    import timm  # local: building the architecture needs the registry, not needed for the other helpers

    problems: list[str] = []
    where = folder.path.name
    try:
        config = json.loads((folder.path / "config.json").read_text())
    except ValueError as e:
        return [f"{where}: config.json is not valid JSON ({e})"]
    if config.get("architecture") != folder.model_name:
        problems.append(f"{where}: config architecture {config.get('architecture')!r} != folder model "
                        f"{folder.model_name!r}")
    cfg = config.get("pretrained_cfg", {})
    expected_id = folder.repo_id(org)
    if cfg.get("hf_hub_id") != expected_id:
        problems.append(f"{where}: pretrained_cfg.hf_hub_id {cfg.get('hf_hub_id')!r} != {expected_id!r}")
    if cfg.get("hf_hub_filename") != WEIGHTS_FILE:
        problems.append(f"{where}: pretrained_cfg.hf_hub_filename must be {WEIGHTS_FILE!r}")
    try:
        with safe_open(folder.path / WEIGHTS_FILE, framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        return problems + [f"{where}: {WEIGHTS_FILE} cannot be parsed ({e})"]
    for key, want in (("model", folder.model_name), ("tag", folder.tag)):
        if metadata.get(key) != want:
            problems.append(f"{where}: safetensors metadata {key}={metadata.get(key)!r}, expected {want!r}")
    if problems:
        return problems
    model_args = {"num_classes": config.get("num_classes"), **config.get("model_args", {})}
    model = timm.create_model(config["architecture"], **model_args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        problems.append(f"{where}: weights do not fit {config['architecture']}: missing {missing}, unexpected "
                        f"{unexpected}, wrong shape {wrong}")
    return problems
