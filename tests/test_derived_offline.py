"""Pretrained ``gd_vgg16`` offline with an empty HF cache: one clear gdzoo error, not huggingface_hub's (issue #32, 7).

Real timm, real huggingface_hub, in fresh processes so that ``HF_HUB_OFFLINE`` and ``HF_HOME`` are read at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _paths import REPO

# One process for both checks (each fresh process costs seconds of imports): the Python API, then the CLI.
PROBE = """
import contextlib, io, json, timm, gdzoo
from gdzoo.cli.main import main
from gdzoo.errors import DerivationSourceUnavailable
try:
    timm.create_model("gd_vgg16", pretrained=True)
except DerivationSourceUnavailable as e:
    got = {"message": str(e), "cause": type(e.__cause__).__name__, "cause_module": type(e.__cause__).__module__}
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    got["cli_rc"] = main(["eval", "--model", "gd_vgg16", "--pretrained"])
got["cli_stderr"] = stderr.getvalue()
print(json.dumps(got))
"""


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", GDZOO_CACHE=str(tmp_path / "gdzoo"),
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def test_pretrained_gd_vgg16_offline_says_what_is_missing_and_how_to_provide_it(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    message = got["message"]
    assert "\n" not in message
    for needed in ("gd_vgg16.tv_in1k", "vgg16.tv_in1k (528 MiB)", "HF_HUB_OFFLINE=1", str(tmp_path / "hf"),
                   "timm/vgg16.tv_in1k", "pretrained_cfg_overlay=dict(file=", "gdzoo convert vgg16.tv_in1k"):
        assert needed in message, (needed, message)
    # huggingface_hub's own error stays chained, for --debug and tracebacks
    assert got["cause"] == "LocalEntryNotFoundError" and got["cause_module"].startswith("huggingface_hub")
    assert not (tmp_path / "gdzoo" / "derived").exists()  # nothing half-derived was cached

    lines = got["cli_stderr"].strip().splitlines()
    assert got["cli_rc"] == 2 and len(lines) == 1, got["cli_stderr"][-3000:]
    assert lines[0].startswith("gdzoo eval: pretrained gd_vgg16.tv_in1k is derived once from timm's vgg16.tv_in1k")
