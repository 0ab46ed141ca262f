"""What a prediction run leaves in its output folder, and how a re-run finds what is already done.

``predictions.json`` records every input's fate over the runs into the folder; classification rows go to a journal
(``.predictions.csv.partial``, fsynced per batch) before ``predictions.csv`` is rewritten, and a segmentation
mask is done when both PNGs end whole and the mask's text chunk holds this run's settings. The folder is locked
while its records are merged, so concurrent runs into one folder lose no rows.

Imports only the standard library at module level (the CLI re-exports these names and must stay light).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .jobs import SETTINGS_KEY, Job, PredictReport

__all__ = ["CSV_NAME", "OutputConflict", "hold_output_folder", "write_summary"]

CSV_NAME = "predictions.csv"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class OutputConflict(Exception):
    """The output folder holds results that this run can neither merge with nor replace unasked."""


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


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
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


def read_summary(out_dir: Path) -> dict[str, Any]:
    """``predictions.json`` of an earlier run ({} when there is none or it cannot be read)."""
    try:
        summary = json.loads((out_dir / "predictions.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def is_classification_settings(settings: Any) -> bool:
    """Settings of a classification run (they name ``topk``; a segmentation run's name ``tile``)."""
    return isinstance(settings, dict) and "topk" in settings


def write_summary(out_dir: Path, settings: dict[str, Any], report: PredictReport, keep: bool = True,
                  also_written: Iterable[str] = ()) -> None:
    """``predictions.json``: the settings of the run and every input's fate (for scripts; also gates CSV reuse).

    The folder's record, merged over the runs into it (earlier runs' inputs are dropped only when not ``keep``):
    ``written`` lists every input whose outputs are in the folder (written now or earlier: ``skipped`` lists those this
    run found already done), ``failed`` every input whose latest try failed, with the reason; ``also_written`` (rows
    of the CSV) are added to ``written`` when not listed. ``last_run`` holds this run's fates alone. Call it holding
    :func:`locked`.
    """
    from .._io import atomic_write_text

    fates: dict[str, str | None] = {}  # input -> None (written) or the reason it failed
    old = read_summary(out_dir) if keep else {}
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


# ---------------------------------------------------------------------------------------------- segmentation


def mask_fingerprint(job: Job, settings: dict[str, Any]) -> str:
    """The text stored in a mask's PNG chunk: the run's settings and the input's size and modification time."""
    stat = job.path.stat()
    return json.dumps({**settings, "input": {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}}, sort_keys=True)


def _ends_whole(path: Path) -> bool:
    """The file ends with PNG's IEND chunk: not cut short (by a copy, a full disk, or a writer other than ours)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(_PNG_END):
            return False
        f.seek(-len(_PNG_END), os.SEEK_END)
        return f.read() == _PNG_END


def masks_done(mask: Path, overlay: Path, fingerprint: str) -> bool:
    """Both outputs are whole PNGs and the mask was made from this very input with these settings."""
    from PIL import Image

    try:
        if not (mask.is_file() and overlay.is_file() and _ends_whole(mask) and _ends_whole(overlay)):
            return False
        with Image.open(mask) as img:
            return img.info.get(SETTINGS_KEY) == fingerprint
    except Exception:  # noqa: BLE001 - an unreadable old output, whatever the reason, is simply redone
        return False


# -------------------------------------------------------------------------------------------- classification


def journal_path(out_dir: Path) -> Path:
    """Where a classification run appends its rows as it goes (deleted once ``predictions.csv`` holds them)."""
    return out_dir / f".{CSV_NAME}.partial"


def csv_line(row: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _read_rows(text: str, errors: bool = False) -> dict[str, list[str]]:
    """Complete rows (a torn last line is dropped) of prediction CSV text, by file, with no error (unless
    ``errors``)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = {}
    for row in csv.reader(lines):
        if len(row) == 5 and row[0] != "file" and (errors or not row[4]):
            rows[row[0]] = row
    return rows


def earlier_table(out_dir: Path, settings: dict[str, Any], overwrite: bool,
                  quiet: bool = False) -> dict[str, list[str]]:
    """Every row (errors too) of the folder's predictions.csv, to merge this run's rows into; call it holding the lock.

    A table made with other settings (or of unknown settings) cannot be merged with: :class:`OutputConflict`, or with
    ``overwrite`` a warning and no rows (it is replaced).
    """
    csv_path = out_dir / CSV_NAME
    if not csv_path.is_file():
        return {}
    made_with = read_summary(out_dir).get("settings")
    if made_with == settings:
        try:
            return _read_rows(csv_path.read_text(), errors=True)
        except (OSError, UnicodeDecodeError):
            pass
    what = (f"made with other settings ({json.dumps(made_with, sort_keys=True)})" if made_with
            else "made with other settings (no readable predictions.json beside it)")
    if not overwrite:
        raise OutputConflict(f"{csv_path} holds predictions {what}; this run ({json.dumps(settings, sort_keys=True)}) "
                             "would mix two tables in one: use another --output, or --overwrite to replace it")
    if not quiet:
        print(f"gdzoo predict: replacing {csv_path} ({what}; --overwrite)", file=sys.stderr)
    return {}


def previous_rows(out_dir: Path, settings_line: str) -> dict[str, list[str]]:
    """Rows of an earlier run with the same settings: its predictions.csv and the journal of an interrupted run."""
    rows: dict[str, list[str]] = {}
    summary, csv_path, journal = out_dir / "predictions.json", out_dir / CSV_NAME, journal_path(out_dir)
    try:
        if (csv_path.is_file() and summary.is_file()
                and json.loads(summary.read_text()).get("settings") == json.loads(settings_line)):
            rows.update(_read_rows(csv_path.read_text()))
        if journal.is_file():
            first, _, rest = journal.read_text().partition("\n")
            if first == f"#{SETTINGS_KEY} {settings_line}":
                rows.update(_read_rows(rest))
    except (OSError, ValueError, UnicodeDecodeError):  # an unreadable earlier run is simply redone
        return {}
    return rows
