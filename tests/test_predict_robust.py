"""``gdzoo predict`` / ``gdzoo eval`` over real-world folders: one bad file never sinks the batch; runs resume.

The folder holds a good image, a truncated one, a text file named .png, grayscale, RGBA, 16-bit, palette,
an image smaller than one tile and a JPEG with EXIF Orientation 6. Masks are checked against references
computed here (predict_tiled on the numpy-normalised image, or the mask of a hand-converted twin file).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import gdzoo  # registers the models with timm
import gdzoo.data.images
import gdzoo.training.tiling
from gdzoo.cli.main import main
from gdzoo.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from gdzoo.training.tiling import predict_tiled

SEG = ["--model", "gd_unet", "--pretrained", "--batch-size", "4"]
GOOD = ["good", "gray", "gray16", "rgba", "palette", "tiny", "sub/exif6"]
BAD = {"truncated.png": "truncated", "not_an_image.png": "not an image"}


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """Dark purple blobs on pink: enough like H&E nuclei for the MoNuSeg U-Net to find some."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.float32)
    image[:] = (235, 180, 210)
    for _ in range(height * width // 500):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 8)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 40, 120)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``inputs/`` (real-world mix, with bad files) and ``twins/`` (each good input converted by hand to plain RGB)."""
    root = tmp_path_factory.mktemp("predict")
    inputs, twins = root / "inputs", root / "twins"
    (inputs / "sub").mkdir(parents=True)
    twins.mkdir()
    rgb = blobs(100, 150, 0)
    Image.fromarray(rgb).save(inputs / "good.png")
    Image.fromarray(rgb).save(twins / "good.png")
    gray = rgb.mean(-1).astype(np.uint8)
    Image.fromarray(gray).save(inputs / "gray.png")
    Image.fromarray(np.repeat(gray[..., None], 3, -1)).save(twins / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(inputs / "gray16.png")  # 16-bit, values up to 65535
    Image.fromarray(np.repeat(gray[..., None], 3, -1)).save(twins / "gray16.png")
    alpha = np.tile(np.linspace(40, 255, 150).astype(np.uint8), (100, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(inputs / "rgba.png")
    a = alpha[..., None] / 255.0
    Image.fromarray(np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)).save(twins / "rgba.png")
    palette = Image.fromarray(rgb).quantize(32)
    palette.save(inputs / "palette.png")
    lut = np.array(palette.getpalette()[:96], np.uint8).reshape(32, 3)
    Image.fromarray(lut[np.asarray(palette)]).save(twins / "palette.png")
    Image.fromarray(rgb[:20, :30]).save(inputs / "tiny.png")
    Image.fromarray(rgb[:20, :30]).save(twins / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(blobs(90, 140, 1), 1))).save(inputs / "sub" / "exif6.jpg", quality=95,
                                                                                 exif=exif.tobytes())
    with Image.open(inputs / "sub" / "exif6.jpg") as img:
        Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(img.convert("RGB")), -1))).save(twins / "exif6.png")
    data = (inputs / "good.png").read_bytes()
    (inputs / "truncated.png").write_bytes(data[: len(data) // 2])
    (inputs / "not_an_image.png").write_text("I am a text file with a .png name\n")
    (inputs / "notes.txt").write_text("not an image extension: ignored\n")
    (inputs / "._good.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: ignored
    return inputs, twins


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder))[: -len("_mask.png")]: np.asarray(Image.open(p))
            for p in sorted(folder.rglob("*_mask.png"))}


def stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.png"))}


def test_predict_folder_writes_every_good_image_names_every_bad_one_and_resumes(  # type: ignore[no-untyped-def]
        folders, tmp_path: Path, capsys) -> None:
    inputs, twins = folders
    out = tmp_path / "out"
    assert main(["predict", *SEG, str(inputs), str(tmp_path / "missing.png"), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("gdzoo predict: failed")]
    assert len(errors) == len(BAD) + 1
    for name, reason in {**BAD, "missing.png": "no such file"}.items():
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert f"{len(GOOD)} written, 0 already done (skipped), {len(BAD) + 1} failed" in captured.out
    summary = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(p).name for p in summary["failed"]) == sorted([*BAD, "missing.png"])

    got = masks_of(out)
    assert sorted(got) == sorted(GOOD)
    assert got["sub/exif6"].shape == (90, 140) and got["tiny"].shape == (20, 30) and got["good"].shape == (100, 150)
    for name in GOOD:
        overlay = Image.open(out / f"{name}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size[::-1] == got[name].shape
        assert set(np.unique(got[name])) <= {0, 255}

    # the good image against tiled inference done here on the numpy-normalised pixels
    model = timm.create_model("gd_unet", pretrained=True).eval()
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    x = (torch.from_numpy(np.array(Image.open(inputs / "good.png"))).permute(2, 0, 1).float() / 255 - mean) / std
    expected = (predict_tiled(model, x, 128, 32, 4).argmax(0).numpy() > 0).astype(np.uint8) * 255
    np.testing.assert_array_equal(got["good"], expected)
    assert 0.01 < (expected > 0).mean() < 0.9  # the model did segment something: the comparison is not vacuous

    # each converted input against its hand-converted plain-RGB twin
    assert main(["predict", *SEG, str(twins), "-o", str(tmp_path / "twins_out")]) == 0
    capsys.readouterr()
    reference = masks_of(tmp_path / "twins_out")
    for name in GOOD:
        agree = (got[name] == reference[Path(name).name]).mean()
        assert agree >= (0.999 if name != "rgba" else 0.99), f"{name}: {agree:.4f} of pixels agree with its twin"

    # the same command again: nothing redone, same exit code, files untouched
    before = stamps(out)
    assert main(["predict", *SEG, str(inputs), "-o", str(out)]) == 1
    assert f"0 written, {len(GOOD)} already done (skipped), {len(BAD)} failed" in capsys.readouterr().out
    assert stamps(out) == before
    # an output cut short (e.g. copied half-way) or a changed setting is redone; --overwrite redoes all
    cut = (out / "tiny_overlay.png").read_bytes()
    (out / "tiny_overlay.png").write_bytes(cut[:-20])
    assert main(["predict", *SEG, str(inputs), "-o", str(out)]) == 1
    assert f"1 written, {len(GOOD) - 1} already done" in capsys.readouterr().out
    assert main(["predict", *SEG, str(inputs / "good.png"), "--overlap", "16", "-o", str(out)]) == 0
    assert "1 written, 0 already done" in capsys.readouterr().out
    assert main(["predict", *SEG, str(inputs), "-o", str(out), "--overwrite"]) == 1
    assert f"{len(GOOD)} written, 0 already done" in capsys.readouterr().out
    assert not list(out.rglob("*.tmp"))


def test_an_interrupted_run_resumes_where_it_stopped(folders, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = folders
    good = [inputs / "good.png", inputs / "gray.png", inputs / "rgba.png"]
    full = tmp_path / "full"
    assert main(["predict", *SEG, *map(str, good), "-o", str(full)]) == 0
    window, calls = gdzoo.training.tiling.ImageTiles.window, []

    def interrupted(self, y, x, size):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 6:  # each image takes 2 windows: Ctrl-C in the middle of rgba.png, the third
            raise KeyboardInterrupt
        return window(self, y, x, size)

    out = tmp_path / "out"
    monkeypatch.setattr(gdzoo.training.tiling.ImageTiles, "window", interrupted)
    assert main(["predict", *SEG, "--batch-size", "1", *map(str, good), "-o", str(out)]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir() if p.name != ".gdzoo.lock") == ["good_mask.png", "good_overlay.png",
                                                                                "gray_mask.png", "gray_overlay.png"]
    assert main(["predict", *SEG, *map(str, good), "-o", str(out)]) == 0  # no half-written rgba file above, and now:
    assert "1 written, 2 already done" in capsys.readouterr().out
    for name, mask in masks_of(full).items():
        np.testing.assert_array_equal(masks_of(out)[name], mask)


def test_memory_limit_and_name_clashes_are_reported_per_file(folders, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    inputs, _ = folders
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(inputs / "gray.png", other / "good.png")  # same output name as inputs/good.png
    code = main(["predict", *SEG, str(inputs / "good.png"), str(inputs / "tiny.png"), str(other / "good.png"),
                 "--memory-limit", "0.00005", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "good.png: too large for the memory limit: 150x100 pixels need about" in err
    assert f"{other / 'good.png'}: its outputs (good_*) would overwrite those of {inputs / 'good.png'}" in err
    assert (tmp_path / "out" / "tiny_mask.png").is_file()  # 600 pixels fit in 0.00005 GiB (53 kB), 15000 do not


def fmnist_or_skip() -> Path:
    try:
        return find_fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def reference_classes(files: list[Path]) -> list[int]:
    """gd_fmnist's predictions through the plain PIL path (8-bit files, no conversion needed)."""
    from gdzoo.data.transforms import build_transform, resolve_data_config_for

    model = timm.create_model("gd_fmnist", pretrained=True).eval()
    transform = build_transform(resolve_data_config_for(model), is_training=False)
    with torch.no_grad():
        return model(torch.stack([transform(Image.open(p).convert("L")) for p in files])).argmax(1).tolist()


def test_classification_csv_has_an_error_column_and_resumes(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    images, _ = load_fashion_mnist("test", fmnist_or_skip())
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(9):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"img{i}.png")
    Image.fromarray(images[9, 0].numpy().astype(np.uint16) * 257).save(folder / "img9_16bit.png")
    (folder / "broken.png").write_bytes((folder / "img0.png").read_bytes()[:60])
    (folder / "text.png").write_text("not an image")
    args = ["predict", "--model", "gd_fmnist", "--pretrained", "--batch-size", "3", str(folder)]

    reads, read_pil = [], gdzoo.data.images.read_pil

    def interrupted(*a, **k):  # type: ignore[no-untyped-def]
        reads.append(1)
        if len(reads) == 8:  # Ctrl-C while reading the third batch
            raise KeyboardInterrupt
        return read_pil(*a, **k)

    monkeypatch.setattr(gdzoo.data.images, "read_pil", interrupted)
    assert main([*args, "-o", str(tmp_path / "out")]) == 130
    monkeypatch.undo()
    assert not (tmp_path / "out" / "predictions.csv").exists()
    assert main([*args, "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    # img0..img4; broken.png is tried again
    assert "5 already done (skipped)" in captured.out and "Traceback" not in captured.err
    assert main([*args, "-o", str(tmp_path / "fresh")]) == 1
    capsys.readouterr()
    assert (tmp_path / "out" / "predictions.csv").read_text() == (tmp_path / "fresh" / "predictions.csv").read_text()

    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    assert len(rows) == 12 and list(next(iter(rows.values()))) == ["file", "prediction", "probability", "top5", "error"]
    assert "truncated" in rows["broken.png"]["error"] and "not an image" in rows["text.png"]["error"]
    assert rows["broken.png"]["prediction"] == "" and rows["img0.png"]["error"] == ""
    names = timm.create_model("gd_fmnist", pretrained=True).pretrained_cfg["label_names"]
    expected = reference_classes([folder / f"img{i}.png" for i in range(9)])
    assert [rows[f"img{i}.png"]["prediction"] for i in range(9)] == [names[c] for c in expected]
    Image.fromarray(images[9, 0].numpy()).save(tmp_path / "img9.png")
    assert rows["img9_16bit.png"]["prediction"] == names[reference_classes([tmp_path / "img9.png"])[0]]
    assert rows["img9_16bit.png"]["top5"] and float(rows["img9_16bit.png"]["probability"]) > 0


def test_eval_skips_and_counts_corrupt_files_or_stops_when_strict(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    images, labels = load_fashion_mnist("test", fmnist_or_skip())
    root = tmp_path / "folder"
    good = []
    for split, offset in (("train", 100), ("test", 0)):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
        for i in range(offset, offset + 24):
            path = root / split / f"c{int(labels[i])}" / f"{i}.png"
            Image.fromarray(images[i, 0].numpy()).save(path)
            good += [(path, int(labels[i]))] if split == "test" else []
    (root / "test" / "c0" / "bad.png").write_text("nope")
    (root / "test" / "c3" / "cut.png").write_bytes(good[0][0].read_bytes()[:50])
    args = ["eval", "--model", "gd_fmnist", "--pretrained", "--data-dir", str(root), "--set",
            "data.dataset=image_folder",
            "--set", "data.val_size=0", "--set", "data.train_subset=null", "--batch-size", "8"]

    assert main([*args, "--strict", "--output", str(tmp_path / "strict.json")]) == 2
    captured = capsys.readouterr()
    assert "2 of 26 images cannot be read (--strict, nothing evaluated)" in captured.err
    assert "bad.png: not an image" in captured.err and "cut.png: truncated" in captured.err
    assert "top1" not in captured.out and not (tmp_path / "strict.json").exists()

    assert main([*args, "--output", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    assert "skipping 2 of 26 images that cannot be read" in captured.err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["samples"] == 24 and metrics["skipped_images"] == 2
    assert sorted(Path(p).name for p in metrics["skipped"]) == ["bad.png", "cut.png"]
    predicted = reference_classes([p for p, _ in good])
    top1 = 100 * np.mean([p == label for p, (_, label) in zip(predicted, good)])
    assert metrics["top1"] == pytest.approx(top1, abs=1e-6)
