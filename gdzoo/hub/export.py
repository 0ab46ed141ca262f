"""Export a model (or a checkpoint's weights) to a ``weights/<model>.<tag>/`` Hub folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models import split_model_name_tag
from timm.models._hub import save_config_for_hf

from .. import __version__
from .._io import atomic_write_text, use_default_permissions
from .card import render_model_card
from .layout import WEIGHTS_FILE, HubFolder, default_org

__all__ = ["export_hub_folder", "swap_into_place"]


def swap_into_place(tmp_dir: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by ``tmp_dir`` so readers never see a half-written folder."""
    for path in [tmp_dir, *tmp_dir.iterdir()]:
        use_default_permissions(path)  # tempfile made them private; a published folder is not
    old = final_dir.with_name(f".{final_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def export_hub_folder(
    model: torch.nn.Module,
    tag: str,
    root: str | os.PathLike = "weights",
    *,
    org: str | None = None,
    metrics: Mapping[str, object] | None = None,
    command: str | None = None,
    config_sha256: str = "none",
    datasets: Sequence[str] = (),
    license: str | None = None,
    description: str = "",
) -> HubFolder:
    """Write ``config.json`` (timm's ``save_for_hf`` format), the weights (``WEIGHTS_FILE``) and ``README.md``.

    ``model`` must be a timm model built by ``timm.create_model`` (its ``pretrained_cfg`` names the
    architecture). The folder appears atomically as ``root/<architecture>.<tag>``.
    """
    architecture = split_model_name_tag(model.pretrained_cfg["architecture"])[0]
    if not tag or "." in tag or "/" in tag:
        raise ValueError(f"tag must be a non-empty name without '.' or '/', got {tag!r}")
    name = f"{architecture}.{tag}"
    repo_id = f"{org or default_org()}/{name}"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        metadata = {"model": architecture, "tag": tag, "gdzoo_version": __version__, "config_sha256": config_sha256}
        save_file(state, tmp_dir / WEIGHTS_FILE, metadata=metadata)
        cfg_overrides = {"hf_hub_id": repo_id, "hf_hub_filename": WEIGHTS_FILE, "tag": tag}
        if license:
            cfg_overrides["license"] = license
        save_config_for_hf(model, tmp_dir / "config.json", model_config={"pretrained_cfg": cfg_overrides})
        card = render_model_card(
            repo_id,
            architecture,
            license=license or model.pretrained_cfg.get("license", "apache-2.0"),
            datasets=datasets,
            metrics=metrics,
            params=sum(p.numel() for p in model.parameters()),
            command=command,
            description=description,
            pipeline_tag=("image-segmentation" if getattr(model, "task", None) == "segmentation"
                          else "image-classification"),
        )
        atomic_write_text(tmp_dir / "README.md", card)
        swap_into_place(tmp_dir, root / name)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return HubFolder.open(root / name)
