"""Transfer-learning freeze policies: ``head_only``, ``all_but_stem`` (Table 2), or regex patterns."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch.nn as nn

__all__ = ["FREEZE_POLICIES", "apply_freeze", "set_train_mode", "module_names"]

FREEZE_POLICIES = ("none", "head_only", "all_but_stem", "stem_and_head", "regex")


def module_names(model: nn.Module, cfg_key: str) -> tuple[str, ...]:
    """The module names a pretrained_cfg entry (``first_conv`` / ``classifier``) points at, in ``model``: a name the
    cfg gives relative to a wrapped base model (``ScaleChannels``' ``model.head.fc`` for ``head.fc``) is found."""
    value = (getattr(model, "pretrained_cfg", {}) or {}).get(cfg_key)
    names = (value,) if isinstance(value, str) else tuple(value or ())
    if not names:
        raise ValueError(f"the model's pretrained_cfg has no {cfg_key!r}; "
                         "use train.freeze=regex with explicit patterns")
    modules = [name for name, _ in model.named_modules()]
    found = []
    for name in names:
        matches = [name] if name in modules else [m for m in modules if m.endswith("." + name)]
        if len(matches) != 1:
            raise ValueError(f"the model's pretrained_cfg {cfg_key!r} names {name!r}, which is "
                             f"{'not a module' if not matches else 'ambiguous: ' + ', '.join(matches)} in "
                             f"{type(model).__name__}; use train.freeze=regex with explicit patterns")
        found.append(matches[0])
    return tuple(found)


def _under(param_name: str, prefixes: Sequence[str]) -> bool:
    return any(param_name == p or param_name.startswith(p + ".") for p in prefixes)


def apply_freeze(model: nn.Module, policy: str, patterns: Sequence[str] = ()) -> list[str]:
    """Set ``requires_grad`` per ``policy``; return the trainable parameter names.

    ``head_only`` trains the classifier (``pretrained_cfg['classifier']``), ``all_but_stem`` trains
    the stem (``pretrained_cfg['first_conv']``) and freezes the rest (Table 2), ``stem_and_head``
    also trains the classifier (a new task's fresh head), ``regex`` freezes every parameter whose
    name matches one of ``patterns`` (``re.search``).
    """
    if policy not in FREEZE_POLICIES:
        raise ValueError(f"train.freeze must be one of {', '.join(FREEZE_POLICIES)}, got {policy!r}")
    names = [n for n, _ in model.named_parameters()]
    if policy == "none":
        trainable = set(names)
    elif policy == "head_only":
        trainable = {n for n in names if _under(n, module_names(model, "classifier"))}
    elif policy == "all_but_stem":
        trainable = {n for n in names if _under(n, module_names(model, "first_conv"))}
    elif policy == "stem_and_head":
        trainable = {n for n in names
                     if _under(n, module_names(model, "first_conv") + module_names(model, "classifier"))}
    else:
        compiled = [re.compile(p) for p in patterns]
        trainable = {n for n in names if not any(c.search(n) for c in compiled)}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    if policy != "none" and not trainable:
        raise ValueError(f"freeze policy {policy!r} left no trainable parameter (patterns={list(patterns)})")
    return [n for n in names if n in trainable]


def set_train_mode(model: nn.Module, training: bool = True) -> nn.Module:
    """``model.train(training)``, but norm layers whose parameters are all frozen stay in eval mode.

    A frozen BatchNorm must not keep updating its running statistics during fine-tuning.
    """
    model.train(training)
    if training:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
    return model
