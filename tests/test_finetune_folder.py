"""``gdzoo train --model M --pretrained --data-dir DIR`` on the user's own folder (issue #32, item 2).

The README's "Fine-tune on your own images" commands run verbatim (plus one epoch) on tiny folders built here;
the layout detection, the class / channel adaptation, the stratified validation split, the run name and the
precedence of ``-c`` and ``--set`` over the decided defaults are checked against values worked out by hand.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gdzoo.cli.main import main
from gdzoo.data.layout import LAYOUTS, LayoutError, detect_layout
from gdzoo.data.splits import class_quotas, stratified_split_indices
from gdzoo.training.folder_recipe import folder_recipe, run_name

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "fox")


def _png(path: Path, size: int = 20, mode: str = "RGB", value: int = 0, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray((rng.random(shape) * 60 + value).astype(np.uint8), mode).save(path)


def _classes(root: Path, per_class: dict[str, int] | None = None, mode: str = "RGB", size: int = 20) -> Path:
    for c, (name, n) in enumerate((per_class or dict.fromkeys(CLASSES, 6)).items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / name / f"{i}.png", size, mode, value=80 * c, seed=10 * c + i)
    return root


def _slides(root: Path, n: int = 4, size: int = 64, labels: int = 2, mode: str = "RGB") -> Path:
    """``n`` images with dark disks ('nuclei') and their masks: 0/255 (labels=2) or class ids 0..labels-1."""
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        rng = np.random.default_rng(i)
        mask = np.zeros((size, size), np.uint8)
        for k in range(6):
            cy, cx = rng.integers(8, size - 8, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 255 if labels == 2 else 1 + k % (labels - 1)
        image = np.where(mask[..., None] > 0, 70, 200) + rng.integers(0, 30, (size, size, 3))
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).convert(mode).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


# ------------------------------------------------------------------------------------------------ layouts
def test_class_folder_layouts(tmp_path: Path) -> None:
    flat = detect_layout(_classes(tmp_path / "flat"))
    assert (flat.task, flat.layout, flat.classes) == ("classification", "DIR/<class>/", list(CLASSES))
    assert flat.counts == {"train": 18} and flat.per_class == dict.fromkeys(CLASSES, 6) and flat.in_chans == 3

    split = tmp_path / "split"
    _classes(split / "train", {"a": 4, "b": 5}, mode="L")
    _classes(split / "val", {"a": 1, "b": 2}, mode="L")
    found = detect_layout(split)
    assert found.layout == "DIR/train/<class>/ + val/<class>/" and found.counts == {"train": 9, "val": 3}
    assert found.in_chans == 1 and found.has_val and not found.has_test
    _png(split / "test" / "a" / "x.png")  # one colour image anywhere makes the input colour
    assert detect_layout(split).in_chans == 3 and detect_layout(split).counts["test"] == 1


def test_segmentation_layouts(tmp_path: Path) -> None:
    flat = detect_layout(_slides(tmp_path / "flat"))
    assert (flat.task, flat.layout, flat.counts) == ("segmentation", "DIR/images/ + DIR/masks/", {"train": 4})
    assert (flat.mask_mode, flat.mask_values, flat.in_chans) == ("binary", [0, 255], 3)
    assert flat.classes == ["background", "foreground"]
    assert flat.image_sizes == [(64, 64)] * 4

    split = tmp_path / "split"
    _slides(split / "train", n=3, labels=4, mode="L")
    _slides(split / "val", n=1, labels=4, mode="L")
    found = detect_layout(split)
    assert found.layout == "DIR/train/{images,masks}/ + val/{images,masks}/" and found.counts == {"train": 3, "val": 1}
    assert (found.mask_mode, found.classes, found.in_chans) == ("labels", ["0", "1", "2", "3"], 1)


@pytest.mark.parametrize("make, needle", [
    (lambda r: None, "no such folder"),
    (lambda r: r.mkdir(), "no sub-folders and no images"),
    (lambda r: _png(r / "loose.png"), "no sub-folders (1 loose image files)"),
    (lambda r: (_classes(r), (r / "wolf").mkdir()), "holds no images"),
    (lambda r: _classes(r, {"only": 3}), "only one class folder (only/)"),
    (lambda r: _classes(r / "val"), "has val/ or test/ but no train/"),
    (lambda r: (_classes(r / "train"), (r / "extra").mkdir()), "beside train/ only val/ and test/"),
    (lambda r: (_classes(r / "train"), _classes(r / "val", {"cat": 1, "wolf": 1})), "class folders ['wolf']"),
    (lambda r: (_slides(r), (r / "masks" / "s2.png").unlink()), "s2.png has no mask masks/s2.png"),
    (lambda r: (_slides(r), __import__("shutil").rmtree(r / "masks")), "has images/ but no masks/"),
    (lambda r: (_slides(r), Image.fromarray(np.full((64, 64), 200, np.uint8)).save(r / "masks" / "s0.png")),
     "masks hold the values [0, 200, 255]"),
])
def test_bad_folders_name_the_folder_and_the_layouts(tmp_path: Path, make, needle: str) -> None:
    root = tmp_path / "my_images"
    make(root)
    with pytest.raises(LayoutError) as info:
        detect_layout(root)
    message = str(info.value)
    assert message.startswith(f"{root}: ") and needle in message and message.endswith(LAYOUTS), message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------------ splits
def test_stratified_split_holds_out_every_class() -> None:
    labels = [0] * 6 + [1] * 6 + [2] * 6
    train, val = stratified_split_indices(labels, 0.15, seed=0)
    assert len(val) == 3 and sorted(labels[i] for i in val.tolist()) == [0, 1, 2]  # round(0.15 * 18) = 3, one each
    assert sorted(train.tolist() + val.tolist()) == list(range(18))
    again, _ = stratified_split_indices(labels, 0.15, seed=0)
    other = [stratified_split_indices(labels, 0.15, seed=s)[1].tolist() for s in range(1, 6)]
    assert again.tolist() == train.tolist() and any(o != val.tolist() for o in other)
    # 20 / 5 / 1 images, 0.2 -> 5 held out: one from each class that can spare one, the rest by size (largest remainder)
    uneven = [0] * 20 + [1] * 5 + [2]
    _, val = stratified_split_indices(uneven, 0.2, seed=0)
    assert [sum(uneven[i] == c for i in val.tolist()) for c in range(3)] == [4, 1, 0]
    assert class_quotas([20, 2, 2], 3) == [1, 1, 1]  # proportional alone: [3, 0, 0]
    assert class_quotas([6, 6, 6], 2) == [1, 1, 0]  # fewer than the classes: proportional, ties to the first classes
    assert class_quotas([2, 2], 4) == [1, 1]  # never a class's last image


def _bundle(root: Path, model_name: str, *overrides: str):
    import timm

    from gdzoo.training.config import load_recipe
    from gdzoo.training.datasets import build_datasets

    plan = folder_recipe(root, model_name, pretrained=False)
    recipe = load_recipe(None, [f"{k}={v}" for section, keys in plan.defaults.items() if section != "name"
                                for k, v in ((f"{section}.{k}", v) for k, v in keys.items())] + list(overrides))
    model = timm.create_model(model_name, num_classes=recipe.model.num_classes or recipe.data.num_classes,
                              in_chans=recipe.model.in_chans)
    return build_datasets(recipe.data, recipe.augment, model, plan.layout.task)


def test_training_splits_follow_the_folder(tmp_path: Path) -> None:
    """The datasets a run trains on: the stratified split of a class folder, the train/ + val/ folders of masks."""
    bundle = _bundle(_classes(tmp_path / "uneven", {"a": 20, "b": 2, "c": 2}), "gd_fmnist")
    val_labels = bundle.val.dataset.labels[bundle.val.indices].tolist()
    assert sorted(val_labels) == [0, 0, 1, 2] and len(bundle.train) == 20  # round(0.15 * 24) = 4: one each, then 'a'
    split = tmp_path / "split"
    _slides(split / "train", n=3)
    _slides(split / "val", n=2)
    bundle = _bundle(split, "gd_unet")
    assert bundle.split_ids == {"train": ["s0", "s1", "s2"], "val": ["s0", "s1"], "test": []}
    assert bundle.val.pairs[0].image == split / "val" / "images" / "s0.png"
    assert len(bundle.train) == 3  # one 64-pixel tile each
    bundle = _bundle(tmp_path / "split" / "train", "gd_unet")  # no val/ folder: one of the 3 images held out
    assert len(bundle.split_ids["val"]) == 1 and len(bundle.split_ids["train"]) == 2


# ------------------------------------------------------------------------------------------------ decided recipe
def test_folder_recipe_adapts_classes_channels_and_schedule(tmp_path: Path) -> None:
    root = _classes(tmp_path / "my_images", {"a": 10, "b": 10, "c": 10, "d": 10}, mode="L")
    plan = folder_recipe(root, "gd_convnext_atto", pretrained=False)
    d = plan.defaults
    assert d["model"] == {"name": "gd_convnext_atto", "num_classes": 4, "in_chans": 1}
    assert d["data"]["dataset"] == "image_folder" and d["data"]["val_size"] == 0.15 and d["data"]["split_by"] == "class"
    assert d["data"]["img_size"] == 224  # gd_convnext_atto's pretrained_cfg input_size
    # 40 images, 0.15 -> 6 held out (2/2/1/1 or so), 34 train; batch 32 -> 2 steps/epoch; scratch: 1500 steps -> 100 max
    assert d["data"]["batch_size"] == 32 and d["train"]["epochs"] == 100 and d["optim"]["lr"] == 5e-3
    assert d["name"] == "gd_convnext_atto-my_images" and not plan.finetune
    tuned = folder_recipe(root, "gd_fmnist", pretrained=True).defaults  # 2 steps/epoch: 300 steps -> 150 -> 30 max
    assert tuned["optim"]["lr"] == 1e-3 and tuned["train"]["epochs"] == 30 and tuned["sched"]["warmup_epochs"] == 0
    assert tuned["data"]["img_size"] == 28


def test_folder_recipe_small_data_and_segmentation(tmp_path: Path) -> None:
    tiny = folder_recipe(_classes(tmp_path / "tiny", {"a": 1, "b": 1}), "gd_fmnist", pretrained=True).defaults
    assert tiny["data"]["val_size"] == 0 and tiny["data"]["batch_size"] == 2  # nothing to spare for validation
    seg = folder_recipe(_slides(tmp_path / "slides", n=5, size=72, labels=3), None, pretrained=True)
    d = seg.defaults
    assert seg.model == "gd_unet" and d["model"] == {"name": "gd_unet", "in_chans": 3}
    assert (d["data"]["mask_mode"], d["data"]["num_classes"], d["data"]["test_size"]) == ("labels", 3, 0)
    # tiles: min(128, 72) rounded down to 64 -> 1 per image; 5 images, 1 validated -> 4 train tiles -> batch 4
    assert d["data"]["tile_size"] == 64 and d["data"]["batch_size"] == 4 and d["train"]["loss"] == "dice_ce"
    only_data = folder_recipe(tmp_path / "slides", "unet5", pretrained=False, adapt_only=True).defaults
    assert set(only_data) == {"model", "data"} and "val_size" not in only_data["data"]
    assert only_data["model"] == {"name": "unet5", "in_chans": 3}


def test_run_names() -> None:
    assert run_name("gd_unet", "my_slides/") == "gd_unet-my_slides"
    assert run_name("gd_fmnist.fmnist", "/data/Cats & Dogs") == "gd_fmnist.fmnist-Cats_Dogs"
    assert run_name("hf-hub:org/model", "x") == "model-x"


# ------------------------------------------------------------------------------------------------ the CLI
def _readme_commands() -> list[str]:
    """The ``gdzoo`` lines of the ```bash blocks in README.md's "Fine-tune on your own images" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Fine-tune on your own images", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("gdzoo ")]
    return [line.split("  #")[0].strip() for line in lines]


def _run(command: str, fast: bool = True) -> int:
    argv = shlex.split(command)[1:]
    if fast and argv[0] == "train":
        argv += ["--no-progress", "--set", "train.epochs=1", "--set", "output.plots=false"]
    return main(argv)


def test_readme_commands_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    commands = _readme_commands()
    assert [c.split()[1] for c in commands] == ["train", "eval", "predict", "train", "predict"], commands
    assert "gdzoo train --model gd_unet --pretrained --data-dir my_slides/" in commands
    monkeypatch.chdir(tmp_path)
    _classes(tmp_path / "my_images")
    _slides(tmp_path / "my_slides")
    for command in commands:
        assert _run(command) == 0, command
        err = capsys.readouterr().err
        if "my_images" in command and " train " in f" {command} ":
            assert "my_images is a classification folder (DIR/<class>/): 18 images" in err
            assert "15 train / 3 val images (data.val_size=0.15, stratified by class" in err
            assert "num_classes=3, in_chans=3" in err and "run      runs/gd_fmnist-my_images" in err
        if "my_slides" in command and " train " in f" {command} ":
            assert "my_slides is a segmentation folder (DIR/images/ + DIR/masks/): 4 images" in err
            assert "3 train / 1 val images" in err and "binary, 2 classes" in err
    run = tmp_path / "runs" / "gd_fmnist-my_images"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["num_classes"] == 3 and config["model"]["pretrained"] is True
    assert (run / "best.safetensors").is_file() and (tmp_path / "predictions" / "predictions.csv").is_file()
    assert yaml.safe_load((run / "classes.json").read_text()) == list(CLASSES)
    assert (tmp_path / "runs" / "gd_unet-my_slides" / "best.safetensors").is_file()
    assert len(list((tmp_path / "masks").glob("*_mask.png"))) == 4


def _config(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, str]:
    assert main(["train", *args, "--print-config"]) == 0
    out = capsys.readouterr()
    return yaml.safe_load(out.out), out.err


def test_set_and_config_win_over_the_decided_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _classes(tmp_path / "my_images", mode="L")
    decided, _ = _config(tmp_path, capsys, "--model", "gd_fmnist", "--pretrained", "--data-dir", str(images))
    assert decided["train"]["epochs"] == 30 and decided["data"]["val_size"] == 0.15
    assert decided["model"]["in_chans"] == 1
    assert decided["name"] == "gd_fmnist-my_images"
    mine, err = _config(tmp_path, capsys, "--model", "gd_fmnist", "--pretrained", "--data-dir", str(images),
                        "--set", "data.val_size=6", "--epochs", "2", "--set", "model.in_chans=3", "--name", "mine")
    assert (mine["data"]["val_size"], mine["train"]["epochs"], mine["model"]["in_chans"]) == (6, 2, 3)
    assert "12 train / 6 val images (data.val_size=6" in err and "2 epochs" in err and "runs/mine" in err

    slides = _slides(tmp_path / "my_slides", labels=3)
    tiny = str(REPO / "configs" / "tiny_monuseg.yaml")
    recipe, err = _config(tmp_path, capsys, "-c", tiny, "--data-dir", str(slides))
    assert recipe["name"] == "tiny_monuseg" and recipe["data"]["val_size"] == 2 and recipe["data"]["tile_size"] == 64
    assert recipe["data"]["root"] == str(slides)
    assert (recipe["data"]["mask_mode"], recipe["data"]["num_classes"]) == ("labels", 3)
    assert recipe["train"]["epochs"] == 1 and "2 train / 2 val images" in err

    assert main(["train", "-c", tiny, "--data-dir", str(images), "--print-config"]) == 2
    assert "data.dataset=segmentation but" in capsys.readouterr().err


def test_bad_folder_is_one_line_and_fashion_mnist_folders_keep_the_main_job(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _classes(tmp_path / "my_images", {"cat": 3, "dog": 0})
    assert main(["train", "--model", "gd_fmnist", "--data-dir", str(tmp_path / "my_images")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gdzoo train: {tmp_path / 'my_images'}: class folder ")
    assert "my_images/dog holds no images" in err[0] and "allowed layouts" in err[0]
    idx = tmp_path / "fmnist"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte.gz").write_bytes(b"")
    recipe, err = _config(tmp_path, capsys, "--data-dir", str(idx))
    assert recipe["data"]["dataset"] == "fashion_mnist" and recipe["data"]["root"] == str(idx) and err == ""
