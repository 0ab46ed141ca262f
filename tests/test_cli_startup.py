"""``gdzoo --help``, every ``gdzoo <cmd> --help`` and usage errors answer without importing torch or timm
(they took 15-20 s on a loaded 2-core machine), while ``import gdzoo`` in a library still registers the models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _paths import REPO

HEAVY = ("torch", "timm", "gdzoo.models", "gdzoo.layers", "gdzoo.training", "gdzoo.hub", "gdzoo.deploy")
HELP_CALLS = [
    ["--help"],
    ["--version"],
    ["models", "--help"],
    ["demo", "--help"],
    ["train", "--help"],
    ["eval", "--help"],
    ["predict", "--help"],
    ["convert", "--help"],
    ["hub", "--help"],
    ["hub", "seed", "--help"],
    ["export", "--help"],
    ["export", "gd_unet.monuseg"],  # a usage error: no -o
    ["train", "--nope"],  # a usage error
    ["predict"],  # a usage error: missing arguments
    [],  # no command: the help
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | <indent>name``)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", HELP_CALLS, ids=lambda a: " ".join(a) or "no-args")
def test_python_m_gdzoo_help_and_usage_errors_import_no_torch(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "gdzoo", *args], env=_env(), capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    assert ("usage: gdzoo" if args != ["--version"] else "gdzoo 0.1") in proc.stdout + proc.stderr
    modules = _imported(proc.stderr)
    assert "gdzoo.cli.main" in modules  # the measurement saw the CLI
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "timm") or m.startswith(HEAVY[2:]))
    assert not heavy, f"gdzoo {' '.join(args)} imported {heavy[:8]}"


def test_console_script_help_imports_no_torch(tmp_path) -> None:
    """The ``gdzoo`` console script (same shape as pip's wrapper): no torch in sys.modules after the help."""
    script = tmp_path / "gdzoo"
    script.write_text(
        "import sys\n"
        "from gdzoo.cli.main import main\n"
        "for args in (['--help'], ['models', '--help'], ['train', '--help'], ['train', '--nope']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))\n"
        "assert not heavy, heavy[:8]\n"
        "print('NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NO-TORCH" in proc.stdout


@pytest.mark.parametrize("order", ["import timm, gdzoo", "import gdzoo, timm"])
def test_import_gdzoo_still_registers_the_models(order: str) -> None:
    code = (f"{order}\n"
            "m = timm.create_model('gd_fmnist')\n"
            "assert isinstance(m, gdzoo.models.FmnistNet)\n"
            "assert gdzoo.GDConv2d.__name__ == 'GDConv2d' and callable(gdzoo.steer) and callable(gdzoo.set_generator)\n"
            "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout

# A command still runs after the lazy start (torch and the models imported in main() before run()): the
# ``python -m gdzoo predict`` / ``eval`` subprocess tests of tests/test_cli_default_weights.py cover it.
