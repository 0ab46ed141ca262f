"""``gdzoo eval`` / ``gdzoo predict`` without ``--pretrained`` or ``--checkpoint``: the published weights (said on
stderr), a refusal for a model without them, and random weights only with ``--random-init``.

Forgetting ``--pretrained`` used to exit 0 with a mask or a 10 % top-1 from random weights.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import gdzoo  # noqa: F401  (registers the models with timm)
from gdzoo.cli.main import main
from gdzoo.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from gdzoo.training.inference import published_tag

from _paths import REPO

try:
    FMNIST: Path | None = find_fashion_mnist(splits=("test",))
except FileNotFoundError:
    FMNIST = None
needs_fmnist = pytest.mark.skipif(FMNIST is None, reason="Fashion-MNIST test split not found (set GDZOO_FMNIST_DIR)")


def _fmnist_pngs(folder: Path, n: int) -> list[tuple[Path, int]]:
    images, labels = load_fashion_mnist("test", FMNIST)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(images[i, 0].numpy()).save(path)
        out.append((path, int(labels[i])))
    return out


def test_published_tag_is_the_default_tag_when_it_ships() -> None:
    assert published_tag("gd_fmnist") == "gd_fmnist.fmnist"
    assert published_tag("gd_fmnist.fmnist_table1") == "gd_fmnist.fmnist_table1"
    assert published_tag("gd_unet") == "gd_unet.monuseg"
    assert published_tag("gd_convnext_atto") is None  # no pretrained tag
    assert published_tag("gd_vgg16") is None  # derived from timm's vgg16 in the HF cache: not published
    assert published_tag("no_such_model") is None


@needs_fmnist
def test_eval_without_flags_uses_the_published_weights(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m.json"
    assert main(["eval", "--model", "gd_fmnist", "--data-dir", str(FMNIST), "--set", "data.test_subset=200",
                 "--batch-size", "100", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "gdzoo eval: using the published weights gd_fmnist.fmnist (pass --random-init for untrained weights)" in err
    metrics = json.loads(out.read_text())
    assert metrics["top1"] > 80, metrics  # random weights: about 10


@needs_fmnist
def test_predict_without_flags_uses_the_published_weights(tmp_path: Path) -> None:
    """In a fresh ``python -m gdzoo`` process (the lazy CLI start-up, then the command's own imports)."""
    pngs = _fmnist_pngs(tmp_path / "in", 8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gdzoo", "predict", "--model", "gd_fmnist", str(tmp_path / "in"),
                           "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gdzoo predict: using the published weights gd_fmnist.fmnist (pass --random-init" in proc.stderr
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(pngs)
    import timm

    names = timm.create_model("gd_fmnist").pretrained_cfg.get("label_names")
    labels = {p.name: y for p, y in pngs}
    right = 0
    for row in rows:
        label = labels[Path(row["file"]).name]
        right += row["prediction"] in (str(label), names[label] if names else str(label))
    assert right >= 6, rows  # random weights: about 1 in 10


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_model_without_published_weights_is_refused(tmp_path: Path, command: str, capsys) -> None:  # type: ignore[no-untyped-def]
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    args = ["--model",
            "gd_convnext_atto"] + ([str(tmp_path / "x.png"), "-o", str(tmp_path / "o")] if command == "predict" else [])
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"gdzoo {command}: gd_convnext_atto has no published weights")
    assert "--checkpoint" in err[0] and "--random-init" in err[0]
    assert "--pretrained" not in err[0]  # gd_convnext_atto has no pretrained tag at all
    assert not (tmp_path / "o").exists()


def test_random_init_is_untrained_on_purpose(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.new("L", (28, 28), 128).save(image)
    assert main(["predict", "--model", "gd_fmnist", "--random-init", str(image), "-o", str(tmp_path / "out")]) == 0
    assert "published weights" not in capsys.readouterr().err
    assert (tmp_path / "out" / "predictions.csv").is_file()
    assert main(["predict", "--model", "gd_fmnist", "--random-init", "--pretrained", str(image), "-o",
                 str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--random-init means untrained weights" in err[0], err
