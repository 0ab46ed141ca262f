"""Datasets: seeded Fashion-MNIST subsets and validation split, ImageFolder transfer learning, timm transforms,
clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import gdzoo.models  # noqa: F401
from gdzoo.data import load_fashion_mnist
from gdzoo.data.classification import image_folder_dataset
from gdzoo.data.splits import split_indices
from gdzoo.data.transforms import resolve_data_config_for
from gdzoo.training import load_recipe, train
from gdzoo.training.config import DataConfig, recipe_from_dict
from gdzoo.training.datasets import build_datasets


def test_subsets_are_seeded_nested_and_disjoint_from_validation() -> None:
    train_1k, val_a = split_indices(60000, val_size=5000, subset=1000, seed=0)
    train_5k, val_b = split_indices(60000, val_size=5000, subset=5000, seed=0)
    assert torch.equal(val_a, val_b) and len(train_1k) == 1000 and len(train_5k) == 5000
    assert set(train_1k.tolist()) <= set(train_5k.tolist())  # Table 1's subsets grow by adding samples
    assert not set(train_5k.tolist()) & set(val_a.tolist())
    assert not torch.equal(split_indices(60000, 5000, 1000, seed=1)[0], train_1k)
    with pytest.raises(ValueError, match="between 0 and"):
        split_indices(100, val_size=200)


def test_fashion_mnist_datasets_use_the_model_cfg() -> None:
    model = timm.create_model("gd_fmnist", num_classes=10)
    recipe = recipe_from_dict({"data": {"train_subset": 100, "val_size": 50, "test_subset": 20}})
    bundle = build_datasets(recipe.data, recipe.augment, model, "classification")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (100, 50, 20)
    assert bundle.data_config["input_size"] == (1, 28,
                                                28) and bundle.data_config["mean"] == model.pretrained_cfg["mean"]
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    raw, labels = load_fashion_mnist("train")
    idx = int(bundle.train.indices[0])
    expected = (raw[idx].float() / 255 - model.pretrained_cfg["mean"][0]) / model.pretrained_cfg["std"][0]
    torch.testing.assert_close(image, expected)
    assert label == int(labels[idx])


def test_transform_channels_follow_the_built_model() -> None:
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1)  # ImageNet cfg says 3 channels
    cfg = resolve_data_config_for(model, {"img_size": 32})
    assert cfg["input_size"] == (1, 32, 32) and len(cfg["mean"]) == len(cfg["std"]) == 1
    assert cfg["mean"][0] == pytest.approx(sum((0.485, 0.456, 0.406)) / 3)


def test_missing_data_errors_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(FileNotFoundError, match="ImageFolder layout"):
        image_folder_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="data.root is required"):
        from gdzoo.training.datasets import dataset_num_classes

        dataset_num_classes(DataConfig(dataset="image_folder"))


def _image_folder(root: Path) -> None:
    """sneaker vs bag, from real Fashion-MNIST test images, saved as RGB files (the model reads 1 channel)."""
    images, labels = load_fashion_mnist("test")
    counts = {"train": 60, "val": 20, "test": 20}
    for cls, label in (("bag", 8), ("sneaker", 7)):
        picks = (labels == label).nonzero()[:, 0].tolist()
        start = 0
        for split, n in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in picks[start : start + n]:
                Image.fromarray(images[i, 0].numpy()).convert("RGB").save(root / split / cls / f"{i}.png")
            start += n


def test_image_folder_transfer_learning_head_only(tmp_path: Path) -> None:
    _image_folder(tmp_path / "data")
    torch.manual_seed(0)
    source = timm.create_model("gd_fmnist", num_classes=10)
    save_file(source.state_dict(), tmp_path / "source.safetensors")
    recipe = load_recipe(None, [
        "name=transfer", "model.name=gd_fmnist", "model.pretrained=false",
        f"model.initial_checkpoint={tmp_path / 'source.safetensors'}",
        "data.dataset=image_folder", f"data.root={tmp_path / 'data'}", "data.batch_size=20", "optim.lr=0.05",
        "train.freeze=head_only", "train.epochs=3", f"output.dir={tmp_path / 'runs'}", "output.plots=false",
        "output.progress=false",
    ])
    result = train(recipe)
    assert result.metrics["samples"] == 40 and "top5" not in result.metrics
    assert (result.run_dir / "classes.json").read_text().strip() == '["bag", "sneaker"]'
    best = load_file(result.run_dir / "best.safetensors")
    assert best["head.fc.weight"].shape == (2, 64)
    for key, value in source.state_dict().items():  # everything but the new head is the frozen source
        if not key.startswith("head."):
            assert torch.equal(best[key], value), key
    assert result.metrics["top1"] >= 75.0  # bags vs sneakers from frozen random GD features
