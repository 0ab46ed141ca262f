"""The inputs of a prediction run: image files found under the given paths, where each one's outputs go, and the
report of what happened to each (written, already done, failed with a reason).

Imports only the standard library at module level (the CLI re-exports these names and must stay light).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SETTINGS_KEY", "Job", "PredictReport", "collect_jobs", "mask_paths"]

SETTINGS_KEY = "gdzoo-predict"  # PNG text chunk of a mask / first line of the classification journal


@dataclass
class Job:
    """One input image and where its outputs go (``stem`` is relative to the output folder, no suffix)."""

    path: Path
    stem: Path


@dataclass
class PredictReport:
    """What happened to every input: written, skipped as already done, or failed with a reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, path: str | Path, reason: str) -> None:
        """Record that ``path`` failed and say so on stderr at once (above any progress bar)."""
        from tqdm.auto import tqdm

        self.failed.append((str(path), reason))
        tqdm.write(f"gdzoo predict: failed {path}: {reason}", file=sys.stderr)

    def summary(self, where: str) -> str:
        lines = [f"gdzoo predict: {len(self.written)} written, {len(self.skipped)} already done (skipped), "
                 f"{len(self.failed)} failed; outputs in {where}"]
        if self.failed:
            lines.append(f"failed ({len(self.failed)}):")
            lines += [f"  {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def mask_paths(out_dir: Path, job: Job) -> tuple[Path, Path]:
    """``<stem>_mask.png`` and ``<stem>_overlay.png`` of a segmentation input under ``out_dir``."""
    base = out_dir / job.stem
    return base.parent / f"{base.name}_mask.png", base.parent / f"{base.name}_overlay.png"


def _output_stem(name: str) -> str:
    """The stem of an input's outputs: ``name`` unless it could leave the output folder or clash with one that does.

    ``Path('..png').stem`` is ``'.'``: dots-only stems become ``%2E`` per dot, and stems starting with ``%`` get it
    escaped (``%25``), so distinct names still map to distinct outputs. Separators cannot occur in a file name.

    Example:
        >>> _output_stem("cell"), _output_stem(".."), _output_stem("%20")
        ('cell', '%2E%2E', '%2520')
    """
    if name.startswith("%"):
        return "%25" + name[1:]
    if not name.strip("."):
        return "%2E" * len(name) or "%"
    return name


def _is_own_output(path: Path) -> bool:
    """A mask / overlay written by ``gdzoo predict``: a PNG that carries our settings chunk (an older overlay has none,
    but then its mask beside it does)."""
    from PIL import Image

    def ours(png: Path) -> bool:
        try:
            with Image.open(png) as img:
                return SETTINGS_KEY in img.info
        except Exception:  # noqa: BLE001 - any PNG that cannot be read is not one of ours
            return False

    name = path.name
    if name.endswith("_mask.png"):
        return ours(path)
    if name.endswith("_overlay.png"):
        return ours(path) or ours(path.with_name(name[: -len("_overlay.png")] + "_mask.png"))
    return False


def _list_folder(folder: Path, report: PredictReport) -> list[Path]:
    """Image files under ``folder`` (recursively; hidden files and folders left out), sorted.

    Symlinked folders are followed (a link back to a folder being walked is not: its files are listed already); a
    dangling link with an image extension (or none: it may have been a folder) and an unreadable folder are failures.
    """
    from ..data.classification import IMG_EXTENSIONS

    found: list[tuple[bool, Path]] = []

    def walk(path: Path, ancestors: frozenset[Path], via_link: bool) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            report.fail(path, f"folder cannot be listed ({e.strerror or e})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = Path(entry.path)
            try:
                is_dir, is_file, is_link = entry.is_dir(), entry.is_file(), entry.is_symlink()
            except OSError as e:
                report.fail(child, f"cannot be read ({e.strerror or e})")
                continue
            if is_dir:
                real = child.resolve()
                if real not in ancestors:
                    walk(child, ancestors | {real}, via_link or is_link)
            elif is_file:
                if child.suffix.lower() in IMG_EXTENSIONS:
                    found.append((via_link or is_link, child))
            elif is_link and (child.suffix.lower() in IMG_EXTENSIONS or not child.suffix):
                report.fail(child, f"broken symbolic link (to {os.readlink(child)}, which does not exist or loops)")

    walk(folder, frozenset({folder.resolve()}), False)
    return [p for _, p in sorted(found)]  # files reached without a link first: they win a duplicate


def collect_jobs(inputs: Iterable[str | Path], output: Path, report: PredictReport) -> list[Job]:
    """Image files of ``inputs`` (folders searched recursively; hidden files and our own outputs left out).

    A folder's sub-folders are mirrored under ``output``; a missing input or an empty folder is a failure, and so is
    a file whose outputs would land on another input's, on an input itself, or outside ``output``.
    """
    from ..data.classification import IMG_EXTENSIONS

    jobs: list[Job] = []
    seen: set[Path] = set()
    out = output.resolve()
    for item in map(Path, inputs):
        if item.is_dir():
            found = [p for p in _list_folder(item, report)
                     if not (out in p.resolve().parents and _is_own_output(p))]  # -o may be (inside) this folder
            if not found:
                report.fail(item, f"no image files ({', '.join(IMG_EXTENSIONS)}) in this folder")
            pairs = [(p, p.relative_to(item).parent / _output_stem(p.stem)) for p in found]
        elif item.is_file():
            pairs = [(item, Path(_output_stem(item.stem)))]
        elif item.is_symlink():
            report.fail(item, f"broken symbolic link (to {os.readlink(item)}, which does not exist or loops)")
            pairs = []
        else:
            report.fail(item, "no such file or folder")
            pairs = []
        for path, stem in pairs:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                jobs.append(Job(path, stem))
    owners: dict[Path, Path] = {}
    unique = []
    root = os.path.abspath(output)
    for job in jobs:
        first = owners.setdefault(job.stem, job.path)
        outputs = [os.path.abspath(p) for p in mask_paths(output, job)]
        if first != job.path:
            report.fail(job.path, f"its outputs ({job.stem}_*) would overwrite those of {first}; "
                                  "rename one or predict it separately")
        elif any(os.path.commonpath([root, p]) != root or p == root for p in outputs):  # cannot happen: a last check
            report.fail(job.path, f"its outputs would be written outside {output}")
        elif clash := next((p for p in outputs if Path(p).resolve() in seen), None):
            report.fail(job.path, f"its output {clash} would overwrite an input; use another --output")
        else:
            unique.append(job)
    return unique
