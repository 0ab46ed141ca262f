"""Pretrained weights in Hugging Face Hub format: export, cache seeding, verification, serving, publishing."""

from .cache import cache_repo_dir, seed_cache, verify_cached_repo, verify_folder
from .convert import ConvertReport, convert_model, export_converted
from .export import export_hub_folder
from .layout import HubFolder, default_org, find_hub_folders
from .push import push_folder
from .server import serve_hub

__all__ = [
    "ConvertReport",
    "convert_model",
    "export_converted",
    "HubFolder",
    "cache_repo_dir",
    "default_org",
    "export_hub_folder",
    "find_hub_folders",
    "push_folder",
    "seed_cache",
    "serve_hub",
    "verify_cached_repo",
    "verify_folder",
]
