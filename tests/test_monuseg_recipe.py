"""The MoNuSeg zoo recipe's parts: organ-stratified k-fold splits, H&E stain jitter, scale jitter, Dice + CE loss."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from gdzoo.data.seg_transforms import PairedAugment, hed_jitter
from gdzoo.data.segmentation import (
    SegmentationTiles,
    SegPair,
    find_segmentation_pairs,
    fold_assignment,
    image_strata,
    split_pairs,
)
from gdzoo.training.config import ConfigError, load_recipe, recipe_from_dict
from gdzoo.training.engine import build_criterion, soft_dice_loss

from _paths import MONUSEG, missing_data

needs_monuseg = pytest.mark.skipif(not (MONUSEG / "images").is_dir(),
                                   reason=missing_data("MoNuSeg images", MONUSEG / "images"))


# --- k-fold splits -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folds", [2, 3, 5])
def test_fold_assignment_partitions_and_spreads_every_stratum(folds: int) -> None:
    rng = np.random.default_rng(folds)
    units = [f"u{i:02d}" for i in range(23)]
    strata = {u: "abcd"[int(rng.integers(4))] for u in units}
    fold = fold_assignment(units, strata, folds, seed=5)
    assert sorted(fold) == units and set(fold.values()) == set(range(folds))
    sizes = Counter(fold.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for s in set(strata.values()):
        per_fold = Counter(fold[u] for u in units if strata[u] == s)
        counts = [per_fold.get(k, 0) for k in range(folds)]
        assert max(counts) - min(counts) <= 1, (s, counts)
    assert fold == fold_assignment(list(reversed(units)), strata, folds, seed=5)  # order of the input does not matter
    assert fold != fold_assignment(units, strata, folds, seed=6)


def test_fold_assignment_rejects_impossible_fold_counts() -> None:
    with pytest.raises(ValueError, match="folds must be between 2 and the number of images \\(3\\), got 4"):
        fold_assignment(["a", "b", "c"], dict.fromkeys("abc", "x"), 4)


@needs_monuseg
def test_monuseg_folds_cover_every_image_once_and_spread_organs() -> None:
    pairs = find_segmentation_pairs(MONUSEG)
    with open(MONUSEG / "index.csv", newline="") as f:
        organ = {row["id"]: row["organ"].rstrip("*") for row in csv.DictReader(f)}
    tests = [split_pairs(pairs, MONUSEG, val_size=0, test_size=None, folds=3, fold=k) for k in range(3)]
    held_out = [sorted(p.id for p in s["test"]) for s in tests]
    assert sorted(i for h in held_out for i in h) == sorted(p.id for p in pairs)  # each image held out exactly once
    for s, h in zip(tests, held_out):
        assert len(h) == 10 and not set(h) & {p.id for p in s["train"]} and len(s["train"]) == 20
    for o in set(organ.values()):
        counts = [sum(organ[i] == o for i in h) for h in held_out]
        assert max(counts) - min(counts) <= 1, (o, counts)
    assert image_strata(["TCGA-18-5592-01Z-00-DX1"], MONUSEG) == {"TCGA-18-5592-01Z-00-DX1": "liver"}


@needs_monuseg
def test_fold_and_test_size_together_are_refused() -> None:
    pairs = find_segmentation_pairs(MONUSEG)
    with pytest.raises(ValueError, match="test_size=0.2 and folds=3 both choose the test split"):
        split_pairs(pairs, MONUSEG, 0, 0.2, folds=3, fold=0)
    with pytest.raises(ValueError, match="fold must be in 0..2, got 3"):
        split_pairs(pairs, MONUSEG, 0, None, folds=3, fold=3)


@pytest.mark.parametrize("section, error", [
    ({"data": {"folds": 1}}, "data.folds must be 0 \\(off\\) or >= 2, got 1"),
    ({"data": {"folds": 3, "fold": 3}}, "data.fold must be in 0..2 \\(data.folds=3\\), got 3"),
    ({"augment": {"stain_jitter": 1.5}}, "augment.stain_jitter must be in \\[0, 1\\), got 1.5"),
    ({"augment": {"scale_jitter": [1.2, 0.8]}}, "augment.scale_jitter must be null or \\[min, max\\]"),
    ({"augment": {"scale_jitter": ["a", 2]}}, "augment.scale_jitter must be null or \\[min, max\\]"),
    ({"train": {"loss": "focal"}}, "cross_entropy"),
])
def test_recipe_rejects_bad_values_by_name(section: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        recipe_from_dict(section)


@pytest.mark.parametrize("model", ["unet5", "gd_unet"])
def test_zoo_recipes_differ_only_in_the_model(model: str) -> None:
    from _paths import REPO

    recipes = {m: load_recipe(REPO / "configs" / "monuseg" / f"{m}.yaml").to_dict() for m in ("unet5", "gd_unet")}
    other = "gd_unet" if model == "unet5" else "unet5"
    a, b = recipes[model], recipes[other]
    assert a["model"]["name"] == model
    for section in ("data", "augment", "optim", "sched", "train"):
        assert a[section] == b[section], section
    assert a["train"]["loss"] == "dice_ce" and a["augment"]["stain_jitter"] > 0 and a["data"]["folds"] == 3


# --- stain jitter --------------------------------------------------------------------------------------------

def _hed_reference(rgb: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """scikit-image's rgb2hed / hed2rgb maths written out in numpy, with the affine change in between."""
    m = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    log_adjust = np.log(1e-6)
    hwc = np.maximum(rgb.transpose(1, 2, 0).astype(np.float64), 1e-6)
    stains = (np.log(hwc) / log_adjust) @ np.linalg.inv(m)
    stains = stains * alpha + beta
    return np.clip(np.exp(stains @ m * log_adjust), 0, 1).transpose(2, 0, 1)


def test_hed_jitter_matches_the_stain_deconvolution_reference() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0.05, 1.0, (3, 9, 11))
    alpha, beta = np.array([1.05, 0.95, 1.0]), np.array([0.02, -0.03, 0.01])
    got = hed_jitter(torch.from_numpy(image), torch.from_numpy(alpha), torch.from_numpy(beta)).numpy()
    np.testing.assert_allclose(got, _hed_reference(image, alpha, beta), atol=1e-12)
    same = hed_jitter(torch.from_numpy(image).float(), torch.ones(3), torch.zeros(3))
    np.testing.assert_allclose(same.numpy(), image, atol=1e-5)
    assert same.dtype == torch.float32


def test_hed_jitter_scales_the_haematoxylin_optical_density() -> None:
    """A pure haematoxylin pixel (OD along Ruifrok's H vector) keeps its hue and has its OD scaled by alpha_H."""
    od = 0.8 * np.array([0.65, 0.70, 0.29])
    pixel = np.exp(-od).reshape(3, 1, 1)
    got = hed_jitter(torch.from_numpy(pixel), torch.tensor([1.5, 1.0, 1.0]), torch.zeros(3)).numpy().ravel()
    np.testing.assert_allclose(-np.log(got), 1.5 * od, rtol=1e-9)


def test_paired_augment_stain_jitter_is_seeded_and_leaves_the_mask() -> None:
    image, mask = torch.rand(3, 16, 16) * 0.8 + 0.1, torch.randint(0, 2, (16, 16))
    aug = PairedAugment(hflip=0, vflip=0, rot90=False, stain_jitter=0.05)
    torch.manual_seed(3)
    a = aug(image, mask)
    torch.manual_seed(3)
    b = aug(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], mask)
    assert 1e-4 < (a[0] - image).abs().max() < 0.5


# --- scale jitter --------------------------------------------------------------------------------------------

def _pair(tmp_path, size: int = 64) -> SegPair:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = (rng.random((size, size)) > 0.6).astype(np.uint8) * 255
    Image.fromarray(rgb).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return SegPair("img", tmp_path / "img.png", tmp_path / "mask.png", "img"), rgb, mask > 0


def test_scale_jitter_resizes_a_larger_window_like_pil(tmp_path) -> None:
    """scale 2: a 32-px window shown as a 16-px tile; image as PIL's antialiased bilinear, mask by nearest pixel."""
    pair, rgb, truth = _pair(tmp_path)
    tiles = SegmentationTiles([pair], tile_size=16, mean=(0, 0, 0), std=(1, 1, 1), jitter=True, scale_range=(2.0, 2.0))
    torch.manual_seed(0)
    torch.rand(())  # the dataset draws the scale first, then the window's corner
    y, x = int(torch.randint(64 - 32 + 1, ())), int(torch.randint(64 - 32 + 1, ()))
    torch.manual_seed(0)
    image, mask = tiles[0]
    window = Image.fromarray(rgb[y : y + 32, x : x + 32])
    expected = np.asarray(window.resize((16, 16), Image.BILINEAR), dtype=np.float64) / 255
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1.5 / 255)
    assert torch.equal(mask, torch.from_numpy(truth[y + 1 : y + 32 : 2, x + 1 : x + 32 : 2].astype(np.int64)))


def test_scale_jitter_range_and_clamp(tmp_path) -> None:
    pair, _, _ = _pair(tmp_path)
    tiles = SegmentationTiles([pair], tile_size=48, jitter=True, scale_range=(0.5, 3.0))
    for _ in range(20):  # windows larger than the image are clamped to it; every tile has the tile size
        image, mask = tiles[0]
        assert image.shape == (3, 48, 48) and mask.shape == (48, 48) and set(mask.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="scale_range must be \\(min, max\\) with 0 < min <= max, got \\(2, 1\\)"):
        SegmentationTiles([pair], tile_size=16, scale_range=(2, 1))


# --- Dice + cross-entropy ------------------------------------------------------------------------------------

def _dice_reference(logits: np.ndarray, target: np.ndarray, smooth: float = 1.0) -> float:
    """1 - mean over foreground classes of (2 sum p*y + s) / (sum p + sum y + s), written with loops."""
    n, c, h, w = logits.shape
    dices = []
    for k in range(1, c):
        inter = p_sum = y_sum = 0.0
        for i in range(n):
            for r in range(h):
                for q in range(w):
                    e = np.exp(logits[i, :, r, q] - logits[i, :, r, q].max())
                    p = e[k] / e.sum()
                    y = float(target[i, r, q] == k)
                    inter, p_sum, y_sum = inter + p * y, p_sum + p, y_sum + y
        dices.append((2 * inter + smooth) / (p_sum + y_sum + smooth))
    return 1 - float(np.mean(dices))


@pytest.mark.parametrize("classes", [2, 3])
def test_soft_dice_loss_matches_loops_and_gradcheck(classes: int) -> None:
    gen = torch.Generator().manual_seed(classes)
    logits = torch.randn(2, classes, 5, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(0, classes, (2, 5, 4), generator=gen)
    got = soft_dice_loss(logits, target).item()
    assert got == pytest.approx(_dice_reference(logits.numpy(), target.numpy()), abs=1e-12)
    torch.autograd.gradcheck(lambda z: soft_dice_loss(z, target), (logits.requires_grad_(),))


def test_dice_ce_is_cross_entropy_plus_dice_and_only_for_segmentation() -> None:
    logits, target = torch.randn(2, 2, 6, 6), torch.randint(0, 2, (2, 6, 6))
    ce = torch.nn.functional.cross_entropy(logits, target)
    got = build_criterion("segmentation", loss="dice_ce")(logits, target)
    assert got.item() == pytest.approx(ce.item() + _dice_reference(logits.numpy(), target.numpy()), abs=1e-6)
    one = torch.randn(2, 1, 6, 6)  # one-logit binary: BCE + Dice of sigmoid probabilities
    prob = torch.sigmoid(one[:, 0])
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(one[:, 0], target.float())
    dice_ce = build_criterion("segmentation", loss="dice_ce")
    assert dice_ce(one, target).item() == pytest.approx((bce + dice).item(), abs=1e-6)
    with pytest.raises(ValueError, match="loss='dice_ce' is for segmentation models; this is a classification model"):
        build_criterion("classification", loss="dice_ce")
    with pytest.raises(ValueError, match="loss must be 'cross_entropy' or 'dice_ce', got 'l1'"):
        build_criterion("segmentation", loss="l1")
