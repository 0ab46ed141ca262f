"""benchmarks/table3.py --cv: its commands resolve to the documented recipes, and its pooled scores are the textbook
ones."""

from __future__ import annotations

import sys

import pytest
import yaml

from _paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gdzoo.cli.main import main as gdzoo_main

import table3


def resolved(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(REPO)
    assert gdzoo_main([*args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("model", table3.MODELS)
def test_cv_cells_resolve_to_the_zoo_recipe(model: str, capsys, monkeypatch) -> None:
    folds = [resolved(table3.cv_train_args(model, k), capsys, monkeypatch) for k in range(table3.FOLDS)]
    final = resolved(table3.cv_train_args(model, table3.FINAL), capsys, monkeypatch)
    for k, cfg in enumerate(folds):
        assert (cfg["data"]["folds"], cfg["data"]["fold"], cfg["data"]["val_size"]) == (3, k, 0)
        assert cfg["output"]["name"] == f"table3_cv/{model}_f{k}" and cfg["model"]["name"] == model
    assert (final["data"]["folds"], final["data"]["test_size"], final["data"]["val_size"]) == (0, 0, 0)
    strip = lambda c: {s: c[s] for s in ("augment", "optim", "sched", "train")}  # noqa: E731
    assert strip(final) == strip(folds[0]) and final["train"]["loss"] == "dice_ce"


@pytest.mark.parametrize("column", table3.PAPER_RECIPE)
def test_earlier_recipe_runs_on_the_same_folds(column: str, capsys, monkeypatch) -> None:
    """The recipe comparison trains configs/table3's recipe unchanged, except that the test split is the fold."""
    model = table3.PAPER_RECIPE[column]
    earlier = resolved(["train", "-c", f"configs/table3/{model}.yaml"], capsys, monkeypatch)
    for k in range(table3.FOLDS):
        cell = resolved(table3.cv_train_args(column, k), capsys, monkeypatch)
        zoo = resolved(table3.cv_train_args(model, k), capsys, monkeypatch)
        assert (cell["data"]["folds"], cell["data"]["fold"]) == (zoo["data"]["folds"], zoo["data"]["fold"]) == (3, k)
        assert cell["output"] == earlier["output"] | {"name": f"table3_cv/{column}_f{k}", "export": False,
                                                      "progress": False}
        for section in ("model", "augment", "optim", "sched", "train"):
            assert cell[section] == earlier[section]
        assert {**cell["data"], "folds": 0, "fold": 0} == earlier["data"]


def test_pooled_scores_and_fold_summary() -> None:
    # rows = truth (background, nucleus), columns = prediction
    a, b = [[50, 10], [5, 35]], [[80, 0], [10, 10]]
    acc, dice, iou = table3._dice([a, b])
    tp, fp, fn = 45, 10, 15
    assert acc == pytest.approx(100 * (45 + 130) / 200) and dice == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert iou == pytest.approx(100 * tp / (tp + fp + fn))
    folds = {f"f{k}": {"held_out_images": {"dice": d, "iou": d - 10, "pixel_acc": 90.0},
                       "per_image_confusion": {f"i{k}": a}}
             for k, d in enumerate((70.0, 74.0, 78.0))}
    summary = table3.cv_summary(folds)
    assert summary["dice"] == pytest.approx(74.0) and summary["dice_std"] == pytest.approx(4.0)  # sample std
    assert summary["iou"] == pytest.approx(64.0) and summary["pixel_acc_std"] == 0
    assert summary["pooled_dice"] == pytest.approx(table3._dice([a])[1])
    assert table3.cv_summary({"f0": folds["f0"]}) is None  # incomplete until every fold has run


@pytest.mark.parametrize("model", [*table3.MODELS, *table3.VARIANTS])
def test_published_cards_state_the_committed_cross_validation(model: str) -> None:
    """The shipped <model>.monuseg is the file publish_cv wrote, and its card's cv/* numbers are the committed
    folds'."""
    import hashlib

    from gdzoo.hub.card import card_metrics

    published = __import__("json").loads((table3.CV_RESULTS / "published.json").read_text())
    folder = REPO / "weights" / f"{model}.monuseg"
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == published[folder.name]["sha256"]
    summary = table3.cv_summary(table3.cv_results()[model])
    card = card_metrics((folder / "README.md").read_text())
    for k in table3.METRICS:
        assert card[f"cv/full_{k}"] == pytest.approx(summary[k], abs=0.005)
        assert card[f"cv/full_{k}_std"] == pytest.approx(summary[f"{k}_std"], abs=0.005)
    assert card[table3.CHECK_METRIC] == published[folder.name][table3.CHECK_METRIC]
