"""gdzoo: fully trainable Gaussian-derivative convolutions and the models built on them, for timm.

``import gdzoo`` registers gdzoo's model families with timm (``timm.create_model('gd_fmnist')``) and exposes
:class:`GDConv2d`, :func:`steer`, :func:`gdify`, ... The one exception is the ``gdzoo`` command's own process
(``gdzoo ...`` or ``python -m gdzoo ...``): there the package stays light, so ``gdzoo --help`` and usage errors
answer without importing torch or timm, and each command imports what it needs when it runs. The public
names below are then resolved on first use (PEP 562), so ``gdzoo.GDConv2d`` works in both cases.
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"

__all__ = [
    "GDConv2d", "OrientationChannels", "ScaleChannels", "__version__", "conv_to_gd", "export", "fit_gdconv_", "gdify",
    "generator", "set_generator", "steer",
]

# public name -> submodule that defines it (imported on first access when the package was imported lazily)
_LAZY = {
    "generator": "kernels",
    "set_generator": "kernels",
    "GDConv2d": "layers",
    "OrientationChannels": "layers",
    "ScaleChannels": "layers",
    "conv_to_gd": "layers",
    "fit_gdconv_": "layers",
    "gdify": "layers",
    "steer": "layers",
    "export": "deploy",  # imported on first use, also outside the CLI: it pulls in training and data
}
_CLI_MODULES = ("gdzoo", "gdzoo.__main__", "gdzoo.cli", "gdzoo.cli.main")


def _started_as_cli() -> bool:
    """True when this process is the ``gdzoo`` command: its console script, or ``python -m gdzoo``."""
    argv0 = _sys.argv[0] if _sys.argv else ""
    if argv0 == "-m":  # ``python -m <module>`` while the module is being located (Python sets argv[0] so)
        orig = list(getattr(_sys, "orig_argv", ()))
        for i, arg in enumerate(orig[1:], 1):
            if arg == "-m":
                return i + 1 < len(orig) and orig[i + 1] in _CLI_MODULES
            if arg.startswith("-m") and not arg.startswith("--"):
                return arg[2:] in _CLI_MODULES
        return False
    name = _os.path.basename(argv0).lower()
    for suffix in (".exe", "-script.py", ".py"):
        name = name.removesuffix(suffix)
    return name == "gdzoo"


def __getattr__(name: str):  # PEP 562: resolve the public names (and ``gdzoo.models``) on first use
    if name in _LAZY or name == "models":
        import importlib

        module = importlib.import_module(f".{_LAZY.get(name, name)}", __name__)
        if name == "models":
            return module
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"models"})


if not _started_as_cli():
    from . import models  # noqa: F401  (registers gdzoo's models with timm)
    from .kernels import generator, set_generator
    from .layers import GDConv2d, OrientationChannels, ScaleChannels, conv_to_gd, fit_gdconv_, gdify, steer
