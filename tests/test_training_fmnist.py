"""A short real Fashion-MNIST run: it learns, writes its reports, exports its best checkpoint; eval/predict reuse it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from gdzoo.cli.main import main
from gdzoo.data import load_fashion_mnist
from gdzoo.hub import HubFolder
from gdzoo.hub.card import card_metrics
from gdzoo.training import load_recipe, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fmnist")
    recipe = load_recipe(REPO / "configs" / "tiny_fmnist.yaml", [
        "model.name=gd_fmnist", "data.train_subset=1200", "data.val_size=500", "data.test_subset=1000",
        "data.batch_size=32",
        "optim.lr=0.02", "train.epochs=2", f"output.dir={out}", "output.export=true", "output.export_tag=test",
        f"output.export_root={out / 'weights'}", "output.progress=false", "output.card_note=Data note (test subset).",
    ])
    return train(recipe, command="gdzoo train -c configs/tiny_fmnist.yaml (test)"), out


def test_learns_well_above_chance(run) -> None:
    result, _ = run
    assert result.metrics["top1"] > 50.0  # chance is 10%
    assert result.metrics["samples"] == 1000
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_top1"] > 30.0


def test_reports_are_written(run) -> None:
    result, _ = run
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "curves.png", "filters.png", "basis.png", "summary.txt",
            "last.pth", "best.safetensors", "final_metrics.json", "classes.json"} <= files
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    with open(result.run_dir / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "test top1" in (result.run_dir / "summary.txt").read_text()
    assert Image.open(result.run_dir / "curves.png").size[0] > 300


def test_best_checkpoint_exported_to_hub_folder(run) -> None:
    result, out = run
    folder = HubFolder.open(out / "weights" / "gd_fmnist.test")
    assert result.export_dir == folder.path
    card = (folder.path / "README.md").read_text()
    assert "test/top1" in card and "train_subset: 1200" in card and "gdzoo train" in card
    assert "best epoch" in card and "by validation top1" in card and "Data note (test subset)." in card
    assert card_metrics(card) == {f"test/{k}": round(v, 2) for k, v in result.metrics.items()
                                  if k in ("top1", "top5", "loss", "mean_class_acc")}
    exported = load_file(folder.path / "model.safetensors")
    best = load_file(result.run_dir / "best.safetensors")
    assert exported.keys() == best.keys() and all(torch.equal(exported[k], best[k]) for k in best)
    model = timm.create_model("gd_fmnist", pretrained=True,
                              pretrained_cfg_overlay={"file": str(folder.path / "model.safetensors")})
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_eval_cli_reproduces_final_metrics(run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result, _ = run
    assert main(["eval", "--checkpoint", str(result.run_dir), "--output", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "top1" in printed and "Ankle boot" in printed  # per-class table with the run's class names
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["top1"] == pytest.approx(result.metrics["top1"]) and metrics["samples"] == 1000


def test_eval_cli_scores_the_training_images_without_augmentation(run, tmp_path: Path) -> None:
    """--split train: the run's 1200 training images as a validation split sees them, even with augmentation on in the
    recipe (random erasing on every image would change the score), against a plain loop over the same images."""
    from gdzoo.data.splits import split_indices
    from gdzoo.training.inference import load_trained_model

    result, _ = run
    out = tmp_path / "train.json"
    assert main(["eval", "--checkpoint", str(result.run_dir), "--split", "train", "--set", "augment.enabled=true",
                 "--set", "augment.re_prob=1.0", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    model, _ = load_trained_model(None, result.run_dir)
    images, labels = load_fashion_mnist("train")
    train_idx, _ = split_indices(len(labels), 500, 1200, 0)
    mean, std = model.pretrained_cfg["mean"][0], model.pretrained_cfg["std"][0]
    with torch.no_grad():
        logits = model.eval()((images[train_idx].float() / 255 - mean) / std)
    expected = 100.0 * (logits.argmax(1) == labels[train_idx]).sum().item() / len(train_idx)
    assert metrics["split"] == "train" and metrics["samples"] == 1200
    assert metrics["top1"] == pytest.approx(expected, abs=1e-6)


def test_predict_cli_writes_csv(run, tmp_path: Path) -> None:
    result, _ = run
    images, labels = load_fashion_mnist("test")
    for i in range(6):
        Image.fromarray(images[i, 0].numpy()).save(tmp_path / f"img{i}.png")
    assert main(["predict", str(tmp_path), "--checkpoint", str(result.run_dir / "best.safetensors"), "-o",
                 str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["prediction"] in json.loads((result.run_dir
                                                                 / "classes.json").read_text()) for r in rows)
    assert len(rows[0]["top5"].split("; ")) == 5


def test_pretrained_auto_uses_the_weights_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.pretrained=auto: the shipped copy when there is one, random init when nothing is here (no download)."""
    from huggingface_hub import constants as hf_constants

    from gdzoo.training.config import ModelConfig
    from gdzoo.training.modeling import create_model

    shipped = Path(__file__).resolve().parents[1] / "weights" / "gd_fmnist.fmnist" / "model.safetensors"
    model, info = create_model(ModelConfig(name="gd_fmnist", pretrained="auto"), 10)
    assert info["weights"] == f"pretrained ({shipped})"
    state = load_file(shipped)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    monkeypatch.setenv("GDZOO_CACHE", str(tmp_path / "gdzoo"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    _, scratch = create_model(ModelConfig(name="gd_vgg16_bn", pretrained="auto", kwargs={"device": "meta"}), None)
    assert scratch["weights"] == "random init"


def test_recipe_search_run_never_reads_the_test_set(tmp_path: Path) -> None:
    """``data.evaluate_test=false``: the test files are never opened (here they do not exist);
    the run ends on validation."""
    root = tmp_path / "fmnist"
    root.mkdir()
    source = Path(load_recipe(REPO / "configs" / "tiny_fmnist.yaml").data.root or "/usr/share/datasets/fashion-mnist")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / name).symlink_to(source / name)
    recipe = load_recipe(REPO / "configs" / "tiny_fmnist.yaml", [
        f"data.root={root}", "data.evaluate_test=false", "train.epochs=1", f"output.dir={tmp_path / 'runs'}",
        "output.plots=false", "output.progress=false"])
    result = train(recipe)
    final = json.loads((result.run_dir / "final_metrics.json").read_text())
    assert final["split"] == "val" and final["samples"] == 256 and final["top1"] == result.metrics["top1"]
    with pytest.raises(Exception, match="evaluate_test=false needs a validation split"):
        load_recipe(REPO / "configs" / "tiny_fmnist.yaml", ["data.evaluate_test=false", "data.val_size=0"])
