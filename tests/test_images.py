"""Robust image reading (16-bit, alpha, palette, EXIF, errors), the streamed PNG writer, and streamed tiled inference.

References are computed here with numpy and PIL's documented formulas, never with gdzoo's own output.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from gdzoo.data.images import ImageReadError, PngRowWriter, find_unreadable, read_image
from gdzoo.training.tiling import ImageTiles, _pad_to, axis_origins, predict_tiled, predict_tiled_rows

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric colour image (survives JPEG well; any rotation or flip of it is visible)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.02, 0.08, 2)
    rgb = np.stack([255 * yy / height, 255 * xx / width, 127 + 100 * np.sin(a * yy + b * xx)], -1)
    rgb[: height // 4, : width // 3] = (250, 20, 20)  # a red block in the top-left corner
    return np.clip(rgb, 0, 255).astype(np.uint8)


def normalised(image, channels: int = 3) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """What the model sees: the whole image as one ImageTiles window (no padding needed)."""
    tiles = ImageTiles(image.pixels, image.scale, MEAN[:channels], STD[:channels], channels, tile=1)
    return tiles.window(0, 0, max(image.height, image.width))


def test_16bit_png_and_tiff_are_scaled_not_clipped(tmp_path: Path) -> None:
    gray8 = smooth_rgb(40, 60)[..., 1]
    gray16 = gray8.astype(np.uint16) * 257  # the same image at 16 bits: 255 -> 65535
    assert gray16.max() > 255
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    Image.fromarray(gray16).save(tmp_path / "g16.tif")
    eight = read_image(tmp_path / "g8.png")
    for name in ("g16.png", "g16.tif"):
        sixteen = read_image(tmp_path / name)
        assert sixteen.pixels.dtype == np.uint16 and sixteen.scale == 65535
        assert int(sixteen.pixels.max()) == int(gray16.max())
        torch.testing.assert_close(normalised(sixteen), normalised(eight), atol=1e-6, rtol=0)
        expected = (gray8.astype(np.float64) / 255 - MEAN[0]) / STD[0]  # channel 0 in float64
        np.testing.assert_allclose(normalised(sixteen)[0].numpy(), expected, atol=1e-5)
    # values that are not multiples of 257 keep their 16-bit precision
    ramp = np.arange(0, 65536, 27, dtype=np.uint16)[: 40 * 60].reshape(40, 60)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = normalised(read_image(tmp_path / "ramp.png"), 1)[0].numpy()
    np.testing.assert_allclose(got, (ramp / 65535.0 - MEAN[0]) / STD[0], atol=1e-5)
    np.testing.assert_array_equal(read_image(tmp_path / "ramp.png").as_uint8()[..., 0],
                                  np.rint(ramp / 257).astype(np.uint8))


def test_exif_orientation_6_equals_the_image_rotated_by_hand(tmp_path: Path) -> None:
    upright = smooth_rgb(48, 80)
    # a camera held sideways stores the scene rotated; Orientation 6 says "turn 90° clockwise"
    stored = np.rot90(upright, 1)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "exif6.jpg", quality=95, exif=exif.tobytes())
    got = read_image(tmp_path / "exif6.jpg").pixels
    with Image.open(tmp_path / "exif6.jpg") as img:
        raw = np.asarray(img.convert("RGB"))  # PIL's decode, ignoring the tag
    assert raw.shape == (80, 48, 3) and got.shape == (48, 80, 3)
    np.testing.assert_array_equal(got, np.rot90(raw, -1))  # rotated 90° clockwise by hand
    assert np.abs(got.astype(int) - upright).mean() < 3  # and it is the upright scene (JPEG error only)
    assert got[:8, :8, 0].mean() > 200 and got[:8, :8, 1].mean() < 60  # the red block is back top-left


def test_alpha_is_composited_over_white_and_palettes_are_expanded(tmp_path: Path) -> None:
    rgb = smooth_rgb(30, 40)
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    a = alpha[..., None] / 255.0
    expected = rgb * a + 255 * (1 - a)  # "over" a white background
    got = read_image(tmp_path / "rgba.png").pixels.astype(float)
    assert np.abs(got - expected).max() <= 1
    gray_alpha = np.dstack([rgb[..., 0], alpha])
    Image.fromarray(gray_alpha, "LA").save(tmp_path / "la.png")
    got = read_image(tmp_path / "la.png", channels=1).pixels[..., 0].astype(float)
    assert np.abs(got - (rgb[..., 0] * a[..., 0] + 255 * (1 - a[..., 0]))).max() <= 1
    palette_image = Image.fromarray(rgb).quantize(16)
    palette_image.save(tmp_path / "palette.png")
    lut = np.array(palette_image.getpalette()[: 3 * 16], np.uint8).reshape(16, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png").pixels, lut[np.asarray(palette_image)])


def test_gray_and_colour_meet_the_models_channels(tmp_path: Path) -> None:
    rgb = smooth_rgb(20, 24)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 2]).save(tmp_path / "gray.png")
    one = read_image(tmp_path / "rgb.png", channels=1).pixels[..., 0].astype(float)
    rgb = rgb.astype(np.int64)
    # ITU-R 601-2, as PIL documents
    luma = rgb[..., 0] * 299 / 1000 + rgb[..., 1] * 587 / 1000 + rgb[..., 2] * 114 / 1000
    assert np.abs(one - luma).max() <= 1
    gray = read_image(tmp_path / "gray.png", channels=3)
    window = normalised(gray)
    for c in range(3):  # one channel repeated, each normalised with its own mean/std
        np.testing.assert_allclose(window[c].numpy(), (rgb[..., 2] / 255.0 - MEAN[c]) / STD[c], atol=1e-5)


def test_bad_files_get_one_clear_reason(tmp_path: Path) -> None:
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "good.png")
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "good.jpg")
    png, jpg = (tmp_path / "good.png").read_bytes(), (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.array([[-5, 70000]], np.int32), "I").save(tmp_path / "int32.tif")
    reasons = {
        "cut.png": "truncated", "cut.jpg": "truncated", "text.png": "not an image", "empty.png": "empty file",
        "int32.tif": "unsupported pixel mode 'I'", "missing.png": "no such file",
    }
    for name, phrase in reasons.items():
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert phrase in info.value.reason and name in str(info.value)
    with pytest.raises(ImageReadError, match=r"too large for the memory limit: 64x64 pixels"):
        read_image(tmp_path / "good.png", max_bytes=1000)
    found = find_unreadable([tmp_path / n for n in ["good.png", "cut.png", "good.jpg", "text.png"]], workers=2)
    assert [p.name for p, _ in found] == ["cut.png", "text.png"]


def test_pils_decompression_bomb_limit_is_kept_unless_ours_replaces_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: a "bomb" for PIL
    with pytest.raises(ImageReadError, match="too large: Image size .4096 pixels. exceeds limit"):
        read_image(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", max_bytes=10**6).pixels.shape == (64, 64, 3)  # our limit instead
    with ThreadPoolExecutor(4) as pool:
        assert all(d.height == 64 for d in pool.map(lambda p: read_image(p, max_bytes=10**6),
                                                    [tmp_path / "big.png"] * 16))
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored after reads from several threads


@pytest.mark.parametrize(("channels", "bands"), [(1, [3, 0, 5, 9]), (3, [17])])
def test_png_row_writer_round_trips_through_pil(channels: int, bands: list[int]) -> None:
    rng = np.random.default_rng(channels)
    shape = (sum(bands), 13) + ((3,) if channels == 3 else ())
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    buf = io.BytesIO()
    with PngRowWriter(buf, 13, len(image), channels, {"note": "hello"}) as png:
        start = 0
        for rows in bands:
            png.write_rows(image[start : start + rows])
            start += rows
    buf.seek(0)
    with Image.open(buf) as img:
        assert img.mode == ("L" if channels == 1 else "RGB") and img.info["note"] == "hello"
        np.testing.assert_array_equal(np.asarray(img), image)


def test_png_row_writer_refuses_a_short_image() -> None:
    png = PngRowWriter(io.BytesIO(), 4, 2, 1)
    png.write_rows(np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError, match="closed after 1 rows"):
        png.close()


def naive_tiled(model: nn.Module, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """The tiling rule written out tile by tile, one tile per forward, with a full-size weight map."""
    height, width = image.shape[-2:]
    padded = _pad_to(image, tile)
    full_h, full_w = padded.shape[-2:]
    margin = overlap // 2
    total = weight = None
    for y in axis_origins(full_h, tile, tile - overlap):
        for x in axis_origins(full_w, tile, tile - overlap):
            with torch.no_grad():
                out = model(padded[None, :, y : y + tile, x : x + tile])[0]
            if total is None:
                total, weight = torch.zeros(out.shape[0], full_h, full_w), torch.zeros(full_h, full_w)
            top, left = (0 if y == 0 else margin), (0 if x == 0 else margin)
            bottom = tile if y + tile == full_h else tile - margin
            right = tile if x + tile == full_w else tile - margin
            total[:, y + top : y + bottom, x + left : x + right] += out[:, top:bottom, left:right]
            weight[y + top : y + bottom, x + left : x + right] += 1
    return (total / weight)[:, :height, :width]


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 2, 5, padding=2)).eval()


@pytest.mark.parametrize(("height", "width", "tile", "overlap", "batch"),
                         [(300, 70, 32, 8, 1), (300, 70, 32, 8, 7), (97, 41, 32, 10, 64), (20, 50, 32, 8, 2),
                          (90, 20, 32, 6, 3)])
def test_streamed_bands_equal_the_naive_tiling(height: int, width: int, tile: int, overlap: int, batch: int) -> None:
    model, image = conv_model(), torch.randn(3, height, width)
    expected = naive_tiled(model, image, tile, overlap)
    bands = list(predict_tiled_rows(model, image, tile, overlap, batch))
    assert [first for first, _ in bands] == sorted({first for first, _ in bands}) and bands[0][0] == 0
    torch.testing.assert_close(torch.cat([b for _, b in bands], 1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predict_tiled(model, image, tile, overlap, batch), expected, atol=1e-5, rtol=1e-5)


def test_bands_arrive_while_tiles_still_run_so_memory_stays_bounded() -> None:
    """A tall image: the first rows are final after the first row of tiles, long before the last batch."""
    model, image, tile, overlap, batch = conv_model(), torch.randn(3, 1000, 64), 32, 8, 4
    stride = tile - overlap
    done: list[int] = []
    seen_at_first_band = None
    largest = 0
    for _, band in predict_tiled_rows(model, image, tile, overlap, batch, on_batch=done.append):
        seen_at_first_band = seen_at_first_band if seen_at_first_band is not None else sum(done)
        largest = max(largest, band.shape[1])
    windows = len(axis_origins(1000, tile, stride)) * len(axis_origins(64, tile, stride))
    assert sum(done) == windows and seen_at_first_band is not None and seen_at_first_band <= batch + 3
    assert largest <= tile + batch * stride  # never more rows of logits than one batch can reach


def test_image_tiles_match_the_float_tensor_path_including_padding() -> None:
    rng = np.random.default_rng(1)
    model = conv_model()
    for height, width in [(50, 90), (20, 50), (100, 10)]:  # needs no pad / reflect pad / replicate pad
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
                  - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        from_pixels = predict_tiled(model, ImageTiles(pixels, 255.0, MEAN, STD, 3, 32), 32, 8, 5)
        torch.testing.assert_close(from_pixels, predict_tiled(model, tensor, 32, 8, 5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "RGBA"])
def test_banded_copy_out_of_pil_equals_numpys_whole_copy(mode: str) -> None:
    from gdzoo.data.images import _as_array

    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (37, 23), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (37, 23, len(mode)), dtype=np.uint8).squeeze(-1) if mode == "L"
                              else rng.integers(0, 256, (37, 23, len(mode)), dtype=np.uint8), mode)
    assert img.mode == mode
    # bands of 5 rows, a short last one
    np.testing.assert_array_equal(_as_array(img, band_pixels=23 * 5), np.asarray(img))
