"""Segmentation data from the real MoNuSeg folder: split by image, 128x128 tiles, masks aligned under augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gdzoo.data.sampling import SeededDataset, sample_seed
from gdzoo.data.seg_transforms import PairedAugment
from gdzoo.data.segmentation import SegmentationTiles, find_segmentation_pairs, split_pairs, tile_origins

from _paths import MONUSEG, missing_data

pytestmark = pytest.mark.skipif(not (MONUSEG / "images").is_dir(),
                                reason=missing_data("MoNuSeg images", MONUSEG / "images"))
TEST_IDS = {"TCGA-21-5786", "TCGA-50-5931", "TCGA-AR-A1AK", "TCGA-E2-A1B5", "TCGA-B0-5698", "TCGA-B0-5711",
            "TCGA-CH-5767", "TCGA-G9-6362"}


def test_pairs_and_index_csv_split_by_image() -> None:
    pairs = find_segmentation_pairs(MONUSEG)
    assert len(pairs) == 30
    splits = split_pairs(pairs, MONUSEG, val_size=3, test_size=None, seed=0)
    ids = {k: {p.id for p in v} for k, v in splits.items()}
    assert {i[:12] for i in ids["test"]} == TEST_IDS  # index.csv's split_suggestion
    assert len(ids["train"]) == 19 and len(ids["val"]) == 3
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    # a seeded random split is reproducible and still disjoint by image
    a = split_pairs(pairs, MONUSEG, val_size=0.2, test_size=0.2, seed=3)
    b = split_pairs(pairs, MONUSEG, val_size=0.2, test_size=0.2, seed=3)
    assert {k: [p.id for p in v] for k, v in a.items()} == {k: [p.id for p in v] for k, v in b.items()}
    assert len({p.id for v in a.values() for p in v}) == 30 == sum(len(v) for v in a.values())


def test_tiles_of_real_images_match_their_masks() -> None:
    pairs = find_segmentation_pairs(MONUSEG)[:2]
    tiles = SegmentationTiles(pairs, tile_size=128, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(tiles) == 2 * 49 == 2 * len(tile_origins(1000, 1000, 128, 128))
    image, mask = tiles[10]
    assert image.shape == (3, 128, 128) and mask.shape == (128, 128) and mask.dtype == torch.int64
    i, y, x = tiles.index[10]
    raw = np.array(Image.open(pairs[i].image).convert("RGB"))[y : y + 128, x : x + 128]
    raw_mask = np.array(Image.open(pairs[i].mask))[y : y + 128, x : x + 128] > 0
    assert torch.allclose(image, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    assert torch.equal(mask, torch.from_numpy(raw_mask.astype(np.int64)))
    assert 0.02 < mask.float().mean() < 0.8  # nuclei are present


def _dihedral(t: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flip in (False, True):
        base = t.flip(-1) if flip else t
        out += [base.rot90(k, (-2, -1)) for k in range(4)]
    return out


def test_augmentation_keeps_masks_aligned() -> None:
    pairs = find_segmentation_pairs(MONUSEG)[:1]
    plain = SegmentationTiles(pairs, tile_size=128, mean=(0, 0, 0), std=(1, 1, 1))
    augmented = SeededDataset(SegmentationTiles(pairs, tile_size=128, mean=(0, 0, 0), std=(1, 1, 1),
                                                augment=PairedAugment(0.5, 0.5, True)), seed=0)
    used = set()
    for idx in range(16):
        image, mask = plain[idx]
        aug_image, aug_mask = augmented[idx]
        candidates = [k for k, (im, mk) in enumerate(zip(_dihedral(image), _dihedral(mask)))
                      if torch.equal(im, aug_image)]
        assert candidates, "augmented image is not a flip/rotation of the tile"
        assert any(torch.equal(_dihedral(mask)[k], aug_mask) for k in candidates), \
            "mask was not transformed with its image"
        used.update(candidates[:1])
    assert len(used) > 2  # several different transforms actually happened
    # same seed, epoch and index -> same augmentation (exact resume); a new epoch draws new ones
    assert torch.equal(augmented[3][0], augmented[3][0])
    before = [augmented[i][1] for i in range(8)]
    augmented.set_epoch(1)
    assert any(not torch.equal(b, augmented[i][1]) for i, b in enumerate(before))


def test_colour_jitter_and_tile_jitter_keep_alignment() -> None:
    pair = find_segmentation_pairs(MONUSEG)[0]
    tiles = SeededDataset(SegmentationTiles([pair], tile_size=96, mean=(0, 0, 0), std=(1, 1, 1),
                                            augment=PairedAugment(0, 0, False, 0.3), jitter=True), seed=1)
    full_image = torch.from_numpy(np.array(Image.open(pair.image).convert("RGB"))).permute(2, 0, 1).float() / 255
    full_mask = torch.from_numpy((np.array(Image.open(pair.mask)) > 0).astype(np.int64))
    origins = set()
    for idx in range(6):
        image, mask = tiles[idx]
        # the jittered window: the first two draws of the sample's seeded RNG
        torch.default_generator.manual_seed(sample_seed(1, 0, idx))
        y, x = int(torch.randint(1000 - 96 + 1, ())), int(torch.randint(1000 - 96 + 1, ()))
        origins.add((y, x))
        assert torch.equal(mask, full_mask[y : y + 96, x : x + 96]), "mask is not the window of its image"
        assert not torch.equal(image, full_image[:, y : y + 96, x : x + 96])  # colour jitter changed the image...
        window = full_image[:, y : y + 96, x : x + 96]
        assert torch.corrcoef(torch.stack([image.flatten(), window.flatten()]))[0, 1] > 0.9  # ...only
    assert len(origins) == 6


def test_tnbc_layout_and_clear_errors(tmp_path: Path) -> None:
    pairs = find_segmentation_pairs(MONUSEG)[:3]
    for slide, pair in zip(("01", "01", "02"), pairs):
        (tmp_path / "tnbc" / f"Slide_{slide}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "tnbc" / f"GT_{slide}").mkdir(parents=True, exist_ok=True)
        Image.open(pair.image).crop((0, 0, 256, 256)).save(tmp_path / "tnbc" / f"Slide_{slide}" / f"{pair.id}.png")
        Image.open(pair.mask).crop((0, 0, 256, 256)).save(tmp_path / "tnbc" / f"GT_{slide}" / f"{pair.id}.png")
    found = find_segmentation_pairs(tmp_path / "tnbc")
    assert [p.group for p in found] == ["Slide_01", "Slide_01", "Slide_02"]
    by_group = split_pairs(found, tmp_path / "tnbc", val_size=1, test_size=0, seed=0, by="group")
    assert {p.group for p in by_group["val"]}.isdisjoint({p.group for p in by_group["train"]})
    assert len(SegmentationTiles(found, tile_size=128)) == 3 * 4

    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_segmentation_pairs(tmp_path / "nothing")
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no masks/ folder"):
        find_segmentation_pairs(tmp_path / "only_images")
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "masks").mkdir()
    shutil.copy(pairs[0].image, broken / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match="has no mask"):
        find_segmentation_pairs(broken)
    Image.open(pairs[0].mask).crop((0, 0, 100, 100)).save(broken / "masks" / "a.png")
    with pytest.raises(ValueError, match="but its mask"):
        SegmentationTiles(find_segmentation_pairs(broken))


def test_unaugmented_view_is_the_fixed_tile_grid() -> None:
    """``gdzoo eval --split train`` on a segmentation run: the training tiles without paired augmentation, jitter or
    rescaling, i.e. exactly the tiles a split built without augmentation holds."""
    from gdzoo.training.datasets import unaugmented

    pairs = find_segmentation_pairs(MONUSEG)[:1]
    common = dict(tile_size=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    augmented = SegmentationTiles(pairs, augment=PairedAugment(0.5, 0.5, True, 0.3), jitter=True,
                                  scale_range=(0.5, 2.0), **common)
    plain = SegmentationTiles(pairs, **common)
    view = unaugmented(augmented, {})
    assert len(view) == len(plain) and augmented.jitter  # the training split itself is left as it was
    for i in (0, 17, len(plain) - 1):
        assert all(torch.equal(a, b) for a, b in zip(view[i], plain[i]))
    with pytest.raises(TypeError, match="no un-augmented view of a list"):
        unaugmented([], {})
