"""``gdzoo eval`` on an image folder labels each class folder with the trained model's class, not its alphabetical rank.

The folders hold real Fashion-MNIST test images. Named as the pretrained gd_fmnist's ``label_names`` (in any case,
spacing or punctuation), numbered ``0_...`` or mapped by ``--class-map``, they score as the model really does
(above 80 %); folders that match nothing stop the evaluation with one line instead of scoring garbage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import gdzoo  # noqa: F401  (registers the models with timm)
from gdzoo.cli.main import main
from gdzoo.data.fashion_mnist import FMNIST_LABELS, find_fashion_mnist, load_fashion_mnist

PER_CLASS = 2  # 20 images
# folder names spelled differently from the label names ('T-shirt/top' cannot be a folder name)
NAMED = {0: "T-shirt_top", 1: "trouser", 2: "PULLOVER", 3: "Dress", 4: "coat", 5: "Sandal", 6: "shirt", 7: "Sneaker",
         8: "bag", 9: "Ankle-Boot"}


def _write(root: Path, folder_of: dict[int, str], per_class: int = PER_CLASS) -> None:
    try:
        images, labels = load_fashion_mnist("test", find_fashion_mnist())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    for label, folder in folder_of.items():
        picks = (labels == label).nonzero()[:, 0].tolist()
        for split, indices in (("train", picks[:1]), ("test", picks[1 : 1 + per_class])):  # ROOT/train/ is required
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            for i in indices:
                Image.fromarray(images[i, 0].numpy()).save(root / split / folder / f"{i}.png")


def _eval(root: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--model", "gd_fmnist", "--pretrained", "--data-dir", str(root), "--set",
                 "data.dataset=image_folder",
                 "--set", "data.val_size=0", "--set", "data.train_subset=null", "--batch-size", "32", "--device", "cpu",
                 "--output", str(out), *extra])


def test_label_named_folders_are_matched_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Alphabetical order of these names ('Ankle-Boot', 'bag', 'coat'...) is far from the model's: 1 of 10 in place."""
    _write(tmp_path / "named", NAMED)
    assert _eval(tmp_path / "named", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["samples"] == 10 * PER_CLASS and metrics["top1"] >= 80.0  # alphabetical labels: 10 %
    err = capsys.readouterr().err
    assert "10 class folders labelled with the model's classes" in err and "'T-shirt_top' -> 'T-shirt/top' (0)" in err
    assert metrics["class_folders"] == {folder: label for label, folder in NAMED.items()}
    assert list(metrics["per_class"]) == list(FMNIST_LABELS)  # reported under the model's own names


def test_numbered_folders_keep_working(tmp_path: Path) -> None:
    _write(tmp_path / "numbered", {label: f"{label}_{name}" for label, name in NAMED.items()})
    assert _eval(tmp_path / "numbered", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["top1"] >= 80.0 and metrics["class_folders"]["9_Ankle-Boot"] == 9


def test_unmatched_folders_are_refused_and_class_map_fixes_them(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folders = {**NAMED, 7: "running shoes", 8: "handbags"}
    _write(tmp_path / "odd", folders)
    assert _eval(tmp_path / "odd", tmp_path / "m.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gdzoo eval: class folders ['handbags', 'running shoes'] of ")
    assert "match none of the model's 10 classes ['T-shirt/top', 'Trouser'," in err[0] and "--class-map FILE" in err[0]
    assert not (tmp_path / "m.json").exists()

    (tmp_path / "map.json").write_text(json.dumps({"running shoes": 7, "handbags": "Bag"}))
    assert _eval(tmp_path / "odd", tmp_path / "m.json", "--class-map", str(tmp_path / "map.json")) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["top1"] >= 80.0
    assert metrics["class_folders"]["running shoes"] == 7 and metrics["class_folders"]["handbags"] == 8

    (tmp_path / "bad.json").write_text(json.dumps({"running shoes": 10, "handbags": "Bag"}))
    assert _eval(tmp_path / "odd", tmp_path / "m.json", "--class-map", str(tmp_path / "bad.json")) == 2
    assert "'running shoes' -> 10 is not a class index 0..9" in capsys.readouterr().err


def test_matching_rules() -> None:
    from gdzoo.data.classification import ClassMatchError, class_key, match_class_folders

    assert class_key("T-shirt/top") == class_key("T-shirt_top") == class_key("t shirt top") == "tshirttop"
    labels = list(FMNIST_LABELS)
    assert match_class_folders(["ankle boot", "T-shirt_top"], labels, 10) == {"ankle boot": 9, "T-shirt_top": 0}
    assert match_class_folders(["c0", "c3", "c12"], None, 13) == {"c0": 0, "c3": 3, "c12": 12}  # numbered, a subset
    with pytest.raises(ClassMatchError, match=r"class folders \['cat', 'dog'\] of the image folder match none of the "
                                              r"model's 2 class indices 0..1 \(its weights name no classes\)"):
        match_class_folders(["cat", "dog"], None, 2)
    with pytest.raises(ClassMatchError, match=r"\['c3', 'c10'\]"):  # a number past the head
        match_class_folders(["c3", "c10"], labels, 10)
    assert match_class_folders(["cat", "dog"]) is None  # a head yet to be trained: the folders define the classes
