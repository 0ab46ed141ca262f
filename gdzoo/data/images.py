"""Reading real-world image files robustly: any PIL mode (16-bit, alpha, palette, CMYK), EXIF orientation, clear errors.

One unreadable file must never sink a batch, so :func:`read_image` turns every way a file can be bad into
an :class:`ImageReadError` that names the file and the reason in words (not an image, truncated, unsupported
pixel mode, too large for the memory limit...). Pixels stay in their integer dtype (``uint8`` or ``uint16``)
with the value of full white in ``scale``, so a huge slide is never held as float32.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DecodedImage",
    "ImageReadError",
    "PngRowWriter",
    "decode_bytes_per_pixel",
    "describe_read_error",
    "find_unreadable",
    "read_image",
    "read_pil",
]

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
# bytes PIL holds per pixel while decoding, by mode (RGB and friends are stored as 4 bytes)
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


class ImageReadError(ValueError):
    """``path`` cannot be used as an image, for ``reason`` (a short phrase in words)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass
class DecodedImage:
    """Pixels ``(H, W, C)`` with C = 1 or 3, in their own dtype; ``scale`` is the value of full white."""

    pixels: np.ndarray
    scale: float
    mode: str  # the file's PIL mode, for messages

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def as_uint8(self, rows: slice = slice(None), channels: int | None = None) -> np.ndarray:
        """Rows of the image as ``uint8`` (16-bit and float rescaled with rounding), gray repeated to ``channels``.

        Example:
            >>> DecodedImage(np.full((2, 3, 1), 65535, np.uint16), 65535.0, "I;16").as_uint8(channels=3).shape
            (2, 3, 3)
        """
        part = self.pixels[rows]
        if part.dtype != np.uint8 or self.scale != 255:
            part = np.clip(np.rint(part.astype(np.float32) * (255.0 / self.scale)), 0, 255).astype(np.uint8)
        if channels is not None and part.shape[-1] != channels:
            part = np.repeat(part, channels, axis=-1)
        return part

    def to_pil(self, channels: int) -> Image.Image:
        """An 8-bit PIL image with ``channels`` (1 = 'L', 3 = 'RGB'), for timm's PIL transforms."""
        array = self.as_uint8(channels=channels)
        return Image.fromarray(array[..., 0] if channels == 1 else array, "L" if channels == 1 else "RGB")


def decode_bytes_per_pixel(mode: str, channels: int, transposed: bool = False) -> int:
    """Peak bytes per pixel while :func:`read_image` decodes a ``mode`` file for a ``channels``-input model.

    PIL's own copy (4 bytes for colour modes), extra copies for EXIF rotation and alpha compositing, the
    kept array (copied out of PIL a band of rows at a time), and a byte of slack. Used to refuse a file before decoding
    it when it would not fit the memory limit.
    """
    pil = _PIL_BYTES.get(mode, 4)
    copies = 1 + int(transposed) + (3 if mode in _ALPHA or mode == "P" else 0)
    kept = 2 if mode in _SIXTEEN_BIT or mode == "I" else 4 if mode == "F" else 1
    kept *= 1 if mode in ("1", "L", "F", "I") + _SIXTEEN_BIT or channels == 1 else 3
    return pil * copies + kept + 1  # + 1: PIL's decoder buffers (measured: 7.5 bytes per pixel for a 10000^2 RGB PNG)


_OPEN_LOCK = threading.Lock()


def _open(path: Path, any_size: bool) -> Image.Image:
    """``Image.open``; with ``any_size`` PIL's decompression-bomb check is off (the caller applies its own limit).

    PIL reads that limit from a global, so it is lifted only under a lock and only while the header is read.
    """
    if not any_size:
        return Image.open(path)
    with _OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def describe_read_error(error: BaseException, path: str | os.PathLike) -> str:
    """A short phrase for why PIL could not read ``path`` (not an image, truncated, permission denied...)."""
    path = Path(path)
    text = str(error).strip()
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, UnidentifiedImageError):
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(8)
        return f"not an image, or a format PIL cannot read (file starts with {head!r})"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large: {text}"
    if isinstance(error, MemoryError):
        return "too large to decode in the available memory"
    if "truncated" in text.lower() or isinstance(error, EOFError):
        return f"truncated: the image data ends early (PIL: {text or type(error).__name__})"
    if isinstance(error, (struct.error, zlib.error, SyntaxError)) or "broken" in text.lower():
        return f"corrupt image data (PIL: {text or type(error).__name__})"
    return f"corrupt or unsupported image ({type(error).__name__}: {text})"


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not worth losing the image for
        return 1


def _on_white(img: Image.Image) -> Image.Image:
    """An image with transparency composited over white (what a viewer shows), as 'RGB'."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _as_array(img: Image.Image, band_pixels: int = 1 << 22) -> np.ndarray:
    """``np.asarray(img)``, copied a band of rows at a time: a whole-image ``tobytes`` would need twice the memory."""
    width, height = img.size
    if width * height <= band_pixels:
        return np.array(img)  # a writable copy, as torch.from_numpy wants
    rows = max(1, band_pixels // width)
    first = np.asarray(img.crop((0, 0, width, min(rows, height))))
    out = np.empty((height, *first.shape[1:]), first.dtype)
    out[: len(first)] = first
    for top in range(len(first), height, rows):
        out[top : top + rows] = np.asarray(img.crop((0, top, width, min(top + rows, height))))
    return out


def _to_array(img: Image.Image, path: Path, channels: int) -> DecodedImage:
    """The decoded pixels of ``img`` as 1 or 3 channels (3 only when the model takes 3 and the image has colour)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        array = _as_array(img).astype(np.uint16, copy=False)  # native byte order, whatever the file's
        return DecodedImage(array[..., None], 65535.0, mode)
    if mode == "I":
        array = _as_array(img)
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageReadError(path, f"unsupported pixel mode 'I' (32-bit integers {low}..{high}, expected 0..65535)")
        return DecodedImage(array.astype(np.uint16)[..., None], 65535.0, mode)
    if mode == "F":
        array = _as_array(img).astype(np.float32, copy=False)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageReadError(path, "unsupported pixel mode 'F' (32-bit floats outside [0, 1])")
        return DecodedImage(array[..., None].copy(), 1.0, mode)
    if mode in ("1", "L"):
        return DecodedImage(_as_array(img if mode == "L" else img.convert("L"))[..., None], 255.0, mode)
    has_alpha = mode in _ALPHA or (mode == "P" and "transparency" in img.info)
    rgb = _on_white(img) if has_alpha else img if mode == "RGB" else img.convert("RGB")
    if channels == 1:
        return DecodedImage(_as_array(rgb.convert("L"))[..., None], 255.0, mode)
    return DecodedImage(_as_array(rgb), 255.0, mode)


def read_image(path: str | os.PathLike, channels: int = 3, max_bytes: int | None = None) -> DecodedImage:
    """Decode ``path`` for a ``channels``-input model (1 or 3), honouring EXIF orientation.

    Raises :class:`ImageReadError` naming the file and the reason for anything unusable, including a
    file whose decoding would need more than ``max_bytes`` (checked from the header, before decoding).
    """
    path = Path(path)
    if channels not in (1, 3):
        raise ValueError(f"images feed 1- or 3-channel models, this one takes {channels} channels")
    try:
        with _open(path, any_size=max_bytes is not None) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageReadError(path, f"empty image ({width}x{height} pixels)")
            orientation = _orientation(img)
            if max_bytes is not None:
                need = width * height * decode_bytes_per_pixel(img.mode, channels, orientation != 1)
                if need > max_bytes:
                    raise ImageReadError(path, f"too large for the memory limit: {width}x{height} pixels need about "
                                               f"{need / 2**30:.2f} GiB to decode, limit {max_bytes / 2**30:.2f} GiB")
            img.load()
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            return _to_array(upright, path, channels)
    except ImageReadError:
        raise
    except Exception as e:  # every way an untrusted file can fail to decode becomes one clear reason
        raise ImageReadError(path, describe_read_error(e, path)) from e


def read_pil(path: str | os.PathLike, channels: int, max_bytes: int | None = None) -> Image.Image:
    """:func:`read_image` as an 8-bit 'L' or 'RGB' PIL image (for classification transforms)."""
    return read_image(path, channels, max_bytes).to_pil(channels)


def _problem(path: Path, channels: int) -> str | None:
    try:
        read_image(path, channels)
    except ImageReadError as e:
        return e.reason
    return None


def find_unreadable(paths: Sequence[str | os.PathLike], channels: int = 3, workers: int = 4) -> list[tuple[Path, str]]:
    """``(path, reason)`` for each of ``paths`` that :func:`read_image` cannot decode (fully decoded, in threads)."""
    paths = [Path(p) for p in paths]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(lambda p: _problem(p, channels), paths))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


class PngRowWriter:
    """Writes an 8-bit 'L' or 'RGB' PNG row band by row band, so a huge mask never exists whole in memory.

    Example:
        >>> import io; buf = io.BytesIO()
        >>> with PngRowWriter(buf, width=4, height=2, channels=1) as png:
        ...     png.write_rows(np.zeros((2, 4), np.uint8))
        >>> Image.open(buf).size
        (4, 2)
    """

    _SIGNATURE = b"\x89PNG\r\n\x1a\n"

    def __init__(self, file, width: int, height: int, channels: int,  # type: ignore[no-untyped-def]
                 text: dict[str, str] | None = None, level: int = 6):
        if channels not in (1, 3):
            raise ValueError(f"PngRowWriter writes 1- or 3-channel images, got {channels}")
        self.file, self.width, self.height, self.channels = file, int(width), int(height), channels
        self.rows_written = 0
        self._zlib = zlib.compressobj(level)
        file.write(self._SIGNATURE)
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 0 if channels == 1 else 2, 0, 0, 0))
        for key, value in (text or {}).items():
            self._chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.file.write(struct.pack(">I", len(data)) + kind + data
                        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``(n, width)`` or ``(n, width, channels)`` uint8 rows."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8).reshape(len(rows), self.width * self.channels)
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"PNG of height {self.height} got {self.rows_written + len(rows)} rows")
        filtered = np.concatenate([np.zeros((len(rows), 1), np.uint8), rows], axis=1)  # filter type 0 per row
        data = self._zlib.compress(filtered.tobytes())
        if data:
            self._chunk(b"IDAT", data)
        self.rows_written += len(rows)

    def close(self) -> None:
        if self.rows_written != self.height:
            raise ValueError(f"PNG of height {self.height} closed after {self.rows_written} rows")
        self._chunk(b"IDAT", self._zlib.flush())
        self._chunk(b"IEND", b"")

    def __enter__(self) -> PngRowWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:  # type: ignore[no-untyped-def]
        if kind is None:
            self.close()
