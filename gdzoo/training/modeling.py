"""Building the recipe's model with ``timm.create_model``: task detection, pretrained weights, initial checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from .. import models as _gdzoo_models  # noqa: F401  (registers gdzoo models with timm)
from ..errors import UserError
from ..models.weights_files import WEIGHTS_FILE
from ..models.weights_source import resolve
from .checkpoint import model_state_from_file
from .config import ModelConfig

__all__ = ["create_model", "is_segmentation", "load_initial_checkpoint"]


def is_segmentation(model: nn.Module, task: str = "auto") -> bool:
    """True for segmentation models: ``task`` says so, or the model's ``task`` attribute (gdzoo's U-nets),
    or a probe forward is 4-D.

    timm's ``PretrainedCfg`` has no ``task`` field, so for other models the model is run once on a tiny
    input of its cfg's channels: ``(N, C, H, W)`` logits mean per-pixel classes.
    """
    if task != "auto":
        return task == "segmentation"
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if getattr(model, "task", None):
        return model.task == "segmentation"
    from ..data.transforms import model_in_chans

    size = tuple((cfg.get("input_size") or (3, 32, 32))[1:])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(iter(model.parameters()), torch.zeros(())).device
            out = model(torch.zeros(1, model_in_chans(model), *size, device=device))
    finally:
        model.train(was_training)
    return isinstance(out, torch.Tensor) and out.dim() == 4


def load_initial_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load weights from ``path``; classifier tensors whose shape differs are skipped (returned)."""
    state = model_state_from_file(path)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    skipped = []
    for key in list(state):
        if key in own and own[key].shape != state[key].shape:
            if any(key.startswith(h + ".") for h in heads):
                skipped.append(key)
                del state[key]
            else:
                raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, "
                                 f"the model expects {tuple(own[key].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return skipped


def _check_local_dir(name: str) -> tuple[Path, str, str | None] | None:
    """For a ``local-dir:<folder>`` model name: read the folder's ``config.json`` and check that its architecture is
    the one its weights (safetensors metadata ``model``) and arguments were written for. Returns the folder, the
    architecture its config asks for and the one it holds (None when it cannot tell); None for other names.

    A config.json that is not JSON, or a folder whose config and weights disagree, raises :class:`UserError`.
    """
    if not name.startswith("local-dir:"):
        return None
    folder = Path(name.removeprefix("local-dir:"))
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"model.name {name!r}: {config_file} does not exist (a local-dir: folder holds config.json and "
                        f"{WEIGHTS_FILE}, e.g. weights/gd_fmnist.fmnist)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{config_file} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
                        f"(char {e.pos}); fix it or export the folder again (gdzoo hub export)") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{config_file} is not UTF-8 text (byte {e.start}); fix it or export the folder again") from e
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UserError(f"{config_file} has no \"architecture\" (a timm config.json names the model it builds)")
    architecture = config["architecture"]
    holds = None
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        from ..models.pretrained import check_safetensors_header

        check_safetensors_header(weights)
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(weights, framework="pt") as f:
                holds = (f.metadata() or {}).get("model")
        except SafetensorError as e:
            raise UserError(f"{weights} is damaged or not a safetensors file ({e})") from e
    if holds and holds != architecture:
        raise UserError(f"{folder} holds {holds} weights ({weights.name}), but its config.json asks for "
                        f"{architecture}; "
                        f"set \"architecture\": \"{holds}\" in {config_file}, or use the {architecture} folder")
    return folder, architecture, holds


def create_model(cfg: ModelConfig, num_classes: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model`` per the recipe; returns the model and where its weights came from.

    ``model.pretrained``: true loads the weights as ``timm.create_model(pretrained=True)`` does (shipped,
    derived, HF cache or Hub); ``auto`` does so only when they are already on this machine.
    """
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if cfg.in_chans is not None:
        if cfg.in_chans < 1:
            raise UserError("model.in_chans must be null (the model's default) or an integer >= 1 (1 grey, 3 RGB), "
                            f"got {cfg.in_chans}")
        kwargs["in_chans"] = cfg.in_chans
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    source = "random init"
    pretrained = cfg.pretrained
    if pretrained in (True, "auto"):
        local = resolve(cfg.name, download=False)  # what is on this machine (shipped / derived: checked)
        if local is not None:
            pretrained, source = True, f"pretrained ({local.path})"
            if local.kind == "shipped" and not ({"pretrained_cfg", "pretrained_cfg_overlay"} & set(kwargs)):
                # the file the load would resolve to, already checked: timm loads it without resolving again
                kwargs["pretrained_cfg_overlay"] = {"file": str(local.path)}
        elif pretrained == "auto":
            pretrained = False
        else:
            source = "pretrained (derived or downloaded)"
    local_dir = _check_local_dir(cfg.name)
    try:
        model = timm.create_model(cfg.name, pretrained=bool(pretrained), **kwargs)
    except TypeError as e:
        if local_dir is None or "unexpected keyword argument" not in str(e):
            raise
        folder, architecture, holds = local_dir
        raise UserError(f"{folder / 'config.json'} asks for {architecture} with arguments it does not take ({e}); "
                        f"the folder holds {holds or 'another architecture'}'s config"
                        + (f": use model.name=local-dir:{folder} with architecture {holds}" if holds else "")) from e
    except RuntimeError as e:
        if isinstance(e, UserError):  # a damaged shipped weights file: its own message
            raise
        if "Unknown model" in str(e):
            raise ValueError(
                f"model.name {cfg.name!r} is not a timm model; see `gdzoo models` or timm.list_models()") from e
        if pretrained:
            raise ValueError(
                f"model.pretrained=true but weights for {cfg.name} could not be loaded: {e} Put them in the HF "
                "cache (gdzoo hub seed), load a file with model.initial_checkpoint, or use "
                "model.pretrained=auto (random init when absent) / false."
            ) from e
        raise
    if cfg.initial_checkpoint:
        skipped = load_initial_checkpoint(model, cfg.initial_checkpoint)
        new_head = f" (new head: {', '.join(skipped)})" if skipped else ""
        source = f"initial checkpoint {cfg.initial_checkpoint}{new_head}"
    return model, {"weights": source, "params": sum(p.numel() for p in model.parameters())}


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def stem_gd_layer(model: nn.Module) -> nn.Module | None:
    """The first ``GDConv2d`` of the model (its stem for gdzoo models), for filter plots."""
    from ..layers import GDConv2d

    return next((m for m in model.modules() if isinstance(m, GDConv2d)), None)
