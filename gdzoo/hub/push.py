"""Publish a Hub folder with huggingface_hub (token from ``HF_TOKEN`` or ``huggingface-cli login``)."""

from __future__ import annotations

from .layout import HubFolder

__all__ = ["push_folder"]


def push_folder(folder: HubFolder, org: str | None = None, dry_run: bool = False, private: bool = False) -> list[str]:
    """Create ``<org>/<model>.<tag>`` if needed and upload the folder; returns the uploaded file names.

    With ``dry_run`` nothing is contacted: the file list that would be uploaded is returned.
    """
    repo_id = folder.repo_id(org)
    names = [p.relative_to(folder.path).as_posix() for p in folder.files()]
    if dry_run:
        return names
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder.path),
        repo_type="model",
        allow_patterns=names,
        commit_message=f"gdzoo: upload {folder.path.name}",
    )
    return names
