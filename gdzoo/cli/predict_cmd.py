"""``gdzoo predict``: run a model on image files; class predictions to CSV, or tiled segmentation masks + overlays.

Every input is handled on its own: it is either written or named on one line with the reason it failed,
and the run goes on. Outputs are written atomically, so re-running the same command resumes: inputs whose
outputs are complete (and made with the same settings) are skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .weights_args import add_weights_arguments

SETTINGS_KEY = "gdzoo-predict"  # PNG text chunk of a mask / first line of the classification journal


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="run a model on image files (classification -> CSV; segmentation -> tiled masks and overlays)",
        description="Classification models write predictions.csv (top-k classes and probabilities, or the reason a "
        "file could not be read). Segmentation models run tiled, overlapping inference on images of any size and "
        "write <name>_mask.png and <name>_overlay.png (folders are searched recursively and mirrored). A file that "
        "cannot be used is reported and skipped; the exit code is 1 when any input failed. Re-running the same "
        "command skips inputs already done (--overwrite redoes them).",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images (searched recursively)")
    add_weights_arguments(p)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--output", "-o", default="predictions", help="output folder")
    p.add_argument("--tile", type=int, default=None, help="segmentation tile size (default: the model's input size)")
    p.add_argument("--overlap", type=int, default=32, help="overlap between segmentation tiles in pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                   help="refuse (and report) images whose decoding would need more than this many GiB "
                        "(default: 80%% of this machine's memory)")
    p.set_defaults(run=run)


@dataclass
class Job:
    """One input image and where its outputs go (``stem`` is relative to the output folder, no suffix)."""

    path: Path
    stem: Path


@dataclass
class Report:
    """What happened to every input: written, skipped as already done, or failed with a reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, path: str | Path, reason: str) -> None:
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


def _output_stem(name: str) -> str:
    """The stem of an input's outputs: ``name`` unless it could leave the output folder or clash with one that does.

    ``Path('..png').stem`` is ``'.'``: dots-only stems become ``%2E`` per dot, and stems starting with ``%`` get it
    escaped (``%25``), so distinct names still map to distinct outputs. Separators cannot occur in a file name.
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
        except Exception:
            return False

    name = path.name
    if name.endswith("_mask.png"):
        return ours(path)
    if name.endswith("_overlay.png"):
        return ours(path) or ours(path.with_name(name[: -len("_overlay.png")] + "_mask.png"))
    return False


def _list_folder(folder: Path, report: Report) -> list[Path]:
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


def collect_jobs(inputs: Iterable[str], output: Path, report: Report) -> list[Job]:
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
        outputs = [os.path.abspath(p) for p in _outputs(output, job)]
        if first != job.path:
            report.fail(job.path, f"its outputs ({job.stem}_*) would overwrite those of {first}; rename one or predict it separately")
        elif any(os.path.commonpath([root, p]) != root or p == root for p in outputs):  # cannot happen: a last check
            report.fail(job.path, f"its outputs would be written outside {output}")
        elif clash := next((p for p in outputs if Path(p).resolve() in seen), None):
            report.fail(job.path, f"its output {clash} would overwrite an input; use another --output")
        else:
            unique.append(job)
    return unique


def default_memory_limit() -> int | None:
    """80% of this machine's physical memory, in bytes (None when the OS does not say)."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


def _settings(args: argparse.Namespace, model_name: str, **extra: Any) -> dict[str, Any]:
    """What the outputs depend on besides the input: a changed setting means the outputs are redone."""
    weights = str(Path(args.checkpoint).resolve()) if args.checkpoint else "pretrained" if args.pretrained else "random init"
    return {"model": model_name, "weights": weights, **extra}


# ---------------------------------------------------------------------------------------------- segmentation


def _mask_settings(job: Job, settings: dict[str, Any]) -> str:
    stat = job.path.stat()
    return json.dumps({**settings, "input": {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}}, sort_keys=True)


def _outputs(out_dir: Path, job: Job) -> tuple[Path, Path]:
    base = out_dir / job.stem
    return base.parent / f"{base.name}_mask.png", base.parent / f"{base.name}_overlay.png"


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _ends_whole(path: Path) -> bool:
    """The file ends with PNG's IEND chunk: not cut short (by a copy, a full disk, or a writer other than ours)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(_PNG_END):
            return False
        f.seek(-len(_PNG_END), os.SEEK_END)
        return f.read() == _PNG_END


def _already_done(mask: Path, overlay: Path, fingerprint: str) -> bool:
    """Both outputs are whole PNGs and the mask was made from this very input with these settings."""
    from PIL import Image

    try:
        if not (mask.is_file() and overlay.is_file() and _ends_whole(mask) and _ends_whole(overlay)):
            return False
        with Image.open(mask) as img:
            return img.info.get(SETTINGS_KEY) == fingerprint
    except Exception:  # an unreadable old output is simply redone
        return False


def _segment_one(model, job: Job, mask_path: Path, overlay_path: Path, fingerprint: str, args, device, data_config,  # type: ignore[no-untyped-def]
                 tile: int, max_bytes: int | None) -> None:
    """Predict one image tile by tile and stream its mask and overlay to disk (atomically, mask last)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .._io import atomic_write
    from ..data.images import PngRowWriter, read_image
    from ..training.tiling import ImageTiles, axis_origins, predict_tiled_rows

    chans = data_config["input_size"][0]
    image = read_image(job.path, chans, max_bytes)
    tiles = ImageTiles(image.pixels, image.scale, data_config["mean"], data_config["std"], chans, tile)
    stride = tile - args.overlap
    count = len(axis_origins(tiles.padded_size[0], tile, stride)) * len(axis_origins(tiles.padded_size[1], tile, stride))
    height, width = image.height, image.width

    def write_both(mask_tmp: str, overlay_tmp: str) -> None:
        with open(mask_tmp, "wb") as mf, open(overlay_tmp, "wb") as of, \
                PngRowWriter(mf, width, height, 1, {SETTINGS_KEY: fingerprint}) as mask_png, \
                PngRowWriter(of, width, height, 3, {SETTINGS_KEY: fingerprint}) as overlay_png, \
                tqdm(total=count, desc=job.path.name, unit="tile", disable=None, leave=False) as bar:
            for first, logits in predict_tiled_rows(model, tiles, tile, args.overlap, args.batch_size, device, bar.update):
                labels = (logits[0] > 0).long() if logits.shape[0] == 1 else logits.argmax(0)
                levels = max(logits.shape[0] - 1, 1)
                mask_png.write_rows((labels * (255 // levels)).to(torch.uint8).numpy())
                rgb = image.as_uint8(slice(first, first + labels.shape[0]), channels=3).astype(np.float32)
                alpha = 0.45 * (labels.numpy() > 0)[..., None]
                red = np.zeros_like(rgb)
                red[..., 0] = 255
                overlay_png.write_rows((rgb * (1 - alpha) + red * alpha).astype(np.uint8))

    atomic_write(mask_path, lambda mask_tmp: atomic_write(overlay_path, lambda overlay_tmp: write_both(mask_tmp, overlay_tmp)))


def _segment(model, jobs: list[Job], args, device, report: Report, settings: dict[str, Any], max_bytes: int | None) -> None:  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    from ..data.images import ImageReadError
    from ..data.transforms import resolve_data_config_for

    data_config = resolve_data_config_for(model)
    tile = args.tile or data_config["input_size"][-1]
    settings = {**settings, "tile": tile, "overlap": args.overlap}
    out_dir = Path(args.output)
    for job in tqdm(jobs, desc="predict", unit="image", disable=None):
        mask, overlay = _outputs(out_dir, job)
        try:
            fingerprint = _mask_settings(job, settings)
        except OSError as e:
            report.fail(job.path, f"cannot be read ({e.strerror or e})")
            continue
        if not args.overwrite and _already_done(mask, overlay, fingerprint):
            report.skipped.append(job.path)
            continue
        try:
            _segment_one(model, job, mask, overlay, fingerprint, args, device, data_config, tile, max_bytes)
        except ImageReadError as e:
            report.fail(job.path, e.reason)
        except _out_of_memory_errors() as e:
            _free_device_memory()
            report.fail(job.path, f"ran out of memory while predicting ({str(e).splitlines()[0] if str(e) else 'MemoryError'}); "
                                  "try a smaller --batch-size or --tile")
        except OSError as e:
            report.fail(job.path, f"cannot write its outputs to {mask.parent} ({e.strerror or e})")
        else:
            report.written.append(job.path)
    with _locked(out_dir):
        write_summary(out_dir, settings, report, keep=not _classification_settings(_read_summary(out_dir).get("settings")))


class OutputConflict(Exception):
    """The output folder holds results that this run can neither merge with nor replace unasked."""


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder (``.predictions.lock``) while its journal is read and rewritten,
    so that concurrent runs into one folder merge instead of dropping each other's rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): sequential runs still merge
        yield
        return
    with open(out_dir / ".predictions.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_summary(out_dir: Path) -> dict[str, Any]:
    """``predictions.json`` of an earlier run ({} when there is none or it cannot be read)."""
    try:
        summary = json.loads((out_dir / "predictions.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _classification_settings(settings: Any) -> bool:
    return isinstance(settings, dict) and "topk" in settings


def write_summary(out_dir: Path, settings: dict[str, Any], report: Report, keep: bool = True,
                  also_written: Iterable[str] = ()) -> None:
    """``predictions.json``: the settings of the run and every input's fate (for scripts; also gates CSV reuse).

    The folder's record, merged over the runs into it (earlier runs' inputs are dropped only when not ``keep``):
    ``written`` lists every input whose outputs are in the folder (written now or earlier: ``skipped`` lists those this
    run found already done), ``failed`` every input whose latest try failed, with the reason; ``also_written`` (rows
    of the CSV) are added to ``written`` when not listed. ``last_run`` holds this run's fates alone. Call it holding
    :func:`_locked`.
    """
    from .._io import atomic_write_text

    fates: dict[str, str | None] = {}  # input -> None (written) or the reason it failed
    old = _read_summary(out_dir) if keep else {}
    for kind in ("written", "skipped"):
        fates.update((p, None) for p in old.get(kind) or [] if isinstance(p, str))
    if isinstance(old.get("failed"), dict):
        fates.update((str(p), str(reason)) for p, reason in old["failed"].items())
    for path in also_written:
        fates.setdefault(path, None)
    for path in [*report.written, *report.skipped]:
        fates.pop(str(path), None)
        fates[str(path)] = None
    for path, reason in report.failed:
        fates.pop(path, None)
        fates[path] = reason
    summary = {"settings": settings,
               "written": [p for p, reason in fates.items() if reason is None],
               "skipped": [str(p) for p in report.skipped],
               "failed": {p: reason for p, reason in fates.items() if reason is not None},
               "last_run": {"written": [str(p) for p in report.written], "skipped": [str(p) for p in report.skipped],
                            "failed": dict(report.failed)}}
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2) + "\n")


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------------------- classification

CSV_NAME = "predictions.csv"


def _journal(out_dir: Path) -> Path:
    return out_dir / f".{CSV_NAME}.partial"


def _read_rows(text: str, errors: bool = False) -> dict[str, list[str]]:
    """Complete rows (a torn last line is dropped) of prediction CSV text, by file, with no error (unless ``errors``)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = {}
    for row in csv.reader(lines):
        if len(row) == 5 and row[0] != "file" and (errors or not row[4]):
            rows[row[0]] = row
    return rows


def _earlier_table(out_dir: Path, settings: dict[str, Any], overwrite: bool, quiet: bool = False) -> dict[str, list[str]]:
    """Every row (errors too) of the folder's predictions.csv, to merge this run's rows into; call it holding the lock.

    A table made with other settings (or of unknown settings) cannot be merged with: :class:`OutputConflict`, or with
    ``overwrite`` a warning and no rows (it is replaced).
    """
    csv_path = out_dir / CSV_NAME
    if not csv_path.is_file():
        return {}
    made_with = _read_summary(out_dir).get("settings")
    if made_with == settings:
        try:
            return _read_rows(csv_path.read_text(), errors=True)
        except (OSError, UnicodeDecodeError):
            pass
    what = f"made with other settings ({json.dumps(made_with, sort_keys=True)})" if made_with else "made with other settings (no readable predictions.json beside it)"
    if not overwrite:
        raise OutputConflict(f"{csv_path} holds predictions {what}; this run ({json.dumps(settings, sort_keys=True)}) "
                             "would mix two tables in one: use another --output, or --overwrite to replace it")
    if not quiet:
        print(f"gdzoo predict: replacing {csv_path} ({what}; --overwrite)", file=sys.stderr)
    return {}


def _previous_rows(out_dir: Path, settings_line: str) -> dict[str, list[str]]:
    """Rows of an earlier run with the same settings: its predictions.csv and the journal of an interrupted run."""
    rows: dict[str, list[str]] = {}
    summary, csv_path, journal = out_dir / "predictions.json", out_dir / CSV_NAME, _journal(out_dir)
    try:
        if csv_path.is_file() and summary.is_file() and json.loads(summary.read_text()).get("settings") == json.loads(settings_line):
            rows.update(_read_rows(csv_path.read_text()))
        if journal.is_file():
            first, _, rest = journal.read_text().partition("\n")
            if first == f"#{SETTINGS_KEY} {settings_line}":
                rows.update(_read_rows(rest))
    except (OSError, ValueError, UnicodeDecodeError):  # an unreadable earlier run is simply redone
        return {}
    return rows


def _classify(model, jobs: list[Job], args, device, classes, report: Report, settings: dict[str, Any],  # type: ignore[no-untyped-def]
              max_bytes: int | None) -> Path:
    import torch
    from tqdm.auto import tqdm

    from .._io import atomic_write_text
    from ..data.images import ImageReadError, read_pil
    from ..data.transforms import build_transform, resolve_data_config_for

    data_config = resolve_data_config_for(model)
    transform, chans = build_transform(data_config, is_training=False), data_config["input_size"][0]
    k = min(args.topk, len(classes))
    out_dir = Path(args.output)
    settings = {**settings, "topk": k}
    settings_line = json.dumps(settings, sort_keys=True)
    with _locked(out_dir):
        _earlier_table(out_dir, settings, args.overwrite)  # refuse before any work, not after
    done = {} if args.overwrite else _previous_rows(out_dir, settings_line)
    journal = _journal(out_dir)
    atomic_write_text(journal, f"#{SETTINGS_KEY} {settings_line}\n" + "".join(_csv_line(row) for row in done.values()))
    rows: dict[str, list[str]] = {}
    todo = []
    for job in jobs:
        if str(job.path) in done:
            rows[str(job.path)] = done[str(job.path)]
            report.skipped.append(job.path)
        else:
            todo.append(job)
    with torch.no_grad(), open(journal, "a", newline="") as log:
        for start in tqdm(range(0, len(todo), args.batch_size), desc="predict", disable=None):
            chunk, images, batch_rows = todo[start : start + args.batch_size], [], []
            for job in chunk:
                try:
                    images.append((job, transform(read_pil(job.path, chans, max_bytes))))
                except ImageReadError as e:
                    report.fail(job.path, e.reason)
                    batch_rows.append([str(job.path), "", "", "", e.reason])
            if images:
                try:
                    probs = model(torch.stack([x for _, x in images]).to(device)).float().softmax(1).cpu()
                except _out_of_memory_errors() as e:
                    _free_device_memory()
                    reason = f"ran out of memory while predicting ({str(e).splitlines()[0] if str(e) else 'MemoryError'}); try a smaller --batch-size"
                    for job, _ in images:
                        report.fail(job.path, reason)
                        batch_rows.append([str(job.path), "", "", "", reason])
                else:
                    top = probs.topk(k, dim=1)
                    for (job, _), p, i in zip(images, top.values, top.indices):
                        batch_rows.append([str(job.path), classes[i[0]], f"{p[0]:.4f}",
                                           "; ".join(f"{classes[j]}:{q:.4f}" for q, j in zip(p.tolist(), i.tolist())), ""])
                        report.written.append(job.path)
            for row in batch_rows:
                rows[row[0]] = row
            log.write("".join(_csv_line(row) for row in batch_rows))
            log.flush()
            os.fsync(log.fileno())
    out = out_dir / CSV_NAME
    with _locked(out_dir):  # merge by input path into the table as it is now (another run may have written meanwhile)
        earlier = _earlier_table(out_dir, settings, args.overwrite, quiet=True)
        table = {**earlier, **{str(job.path): rows[str(job.path)] for job in jobs if str(job.path) in rows}}
        for path, row in done.items():  # rows of an interrupted run's other inputs (its journal is deleted below)
            table.setdefault(path, row)
        body = _csv_line(["file", "prediction", "probability", f"top{k}", "error"]) + "".join(map(_csv_line, table.values()))
        write_summary(out_dir, settings, report, keep=_read_summary(out_dir).get("settings") == settings,
                      also_written=[p for p, row in table.items() if not row[4]])
        atomic_write_text(out, body)
        journal.unlink(missing_ok=True)
    return out


def _csv_line(row: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------- run


def hold_output_folder(out_dir: Path) -> Any:
    """Lock ``out_dir`` (shared: predictions into one folder may run side by side) for this run; when no other gdzoo
    process holds it, first delete the temp files of atomic writes that killed runs left there (``.<name>.<8>.tmp``).
    Returns the :class:`~gdzoo._io.FolderLock`; it is released when dropped or when the process ends."""
    from .._io import FolderLock, remove_stale_temp_files

    lock = FolderLock(out_dir)
    if lock.acquire():  # exclusive: no live writer whose temp files these could be
        remove_stale_temp_files(out_dir, recursive=True)
    lock.acquire(shared=True)  # not held when a training run holds the folder: predict then goes on unlocked
    return lock


def run(args: argparse.Namespace) -> int:
    from ..training.distributed import resolve_device
    from ..training.inference import choose_weights, class_names_for, load_trained_model
    from ..training.modeling import is_segmentation

    if args.batch_size < 1 or args.topk < 1 or (args.tile is not None and args.tile < 1):
        print(f"gdzoo predict: --batch-size, --topk and --tile must be positive, got {args.batch_size}, {args.topk}, {args.tile}",
              file=sys.stderr)
        return 2
    if args.memory_limit is not None and args.memory_limit <= 0:
        print(f"gdzoo predict: --memory-limit must be a positive number of GiB, got {args.memory_limit}", file=sys.stderr)
        return 2
    max_bytes = int(args.memory_limit * 2**30) if args.memory_limit is not None else default_memory_limit()
    out_dir = Path(args.output)
    report = Report()
    jobs = collect_jobs(args.inputs, out_dir, report)
    try:
        pretrained = choose_weights("predict", args.model, args.checkpoint, args.pretrained, args.random_init)
        model, recipe = load_trained_model(args.model, args.checkpoint, pretrained, args.num_classes)
        device = resolve_device(args.device)
        out_dir.mkdir(parents=True, exist_ok=True)
        _held = hold_output_folder(out_dir)  # noqa: F841 - held until run() returns (the process's end drops it too)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"gdzoo predict: {e}", file=sys.stderr)
        return 2
    model.to(device).eval()
    settings = _settings(args, args.model or (recipe.model.name if recipe else ""))
    segmentation = is_segmentation(model, recipe.model.task if recipe else "auto")
    if segmentation:
        from ..data.transforms import resolve_data_config_for

        tile = args.tile or resolve_data_config_for(model)["input_size"][-1]
        if not 0 <= args.overlap < tile:
            print(f"gdzoo predict: --overlap must be in [0, tile={tile}), got {args.overlap}", file=sys.stderr)
            return 2
    try:
        if segmentation:
            _segment(model, jobs, args, device, report, settings, max_bytes)
        else:
            classes = class_names_for(model, args.checkpoint, getattr(model, "num_classes", 0) or 0)
            _classify(model, jobs, args, device, classes, report, settings, max_bytes)
    except OutputConflict as e:
        print(f"gdzoo predict: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(report.summary(str(out_dir)), file=sys.stderr)
        print("gdzoo predict: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(report.summary(str(out_dir) if segmentation else str(out_dir / CSV_NAME)))
    return 1 if report.failed else 0
