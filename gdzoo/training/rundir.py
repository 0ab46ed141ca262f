"""The run folder's guard: an existing run is continued (``--resume``), moved aside (``--overwrite``) or left alone.

A live run holds its folder with a :class:`~gdzoo._io.FolderLock`, so a second process cannot write into it; the lock
dies with its process, so a killed run's folder is free again at once. Temp files that killed atomic writes left are
removed when the folder is next claimed.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from .._io import FolderLock, remove_stale_temp_files

__all__ = ["RUN_FILES", "RunFolderError", "claim_run_dir", "continues_run", "run_progress"]

# Everything ``gdzoo train`` writes in a run folder, in the order it appears.
RUN_FILES = ("config.yaml", "classes.json", "splits.json", "metrics.jsonl", "metrics.csv", "curves.png", "last.pth",
             "best.safetensors", "final_metrics.json", "summary.txt", "filters.png", "basis.png",
             "segmentation_examples.png")
# The files a fresh start would lose; a folder with none of them (and no metrics rows) has nothing to lose.
_PROGRESS_FILES = ("curves.png", "last.pth", "best.safetensors", "final_metrics.json", "summary.txt", "filters.png",
                   "basis.png", "segmentation_examples.png")


class RunFolderError(RuntimeError):
    """The run folder holds a run that this command would destroy, or another live process holds it."""


def run_progress(run_dir: Path) -> list[str]:
    """The files of ``run_dir`` that hold a run's progress or results (empty: starting over there loses nothing)."""
    found = [name for name in _PROGRESS_FILES if (run_dir / name).is_file()]
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.is_file() and jsonl.read_text(encoding="utf-8", errors="replace").strip():
        found.append("metrics.jsonl")
    return [name for name in RUN_FILES if name in found]


def continues_run(resume: str | None, run_dir: Path) -> bool:
    """Whether ``train.resume`` continues the run in ``run_dir`` (its own ``last.pth``, by ``auto`` or by path)."""
    own = run_dir / "last.pth"
    if not resume or not own.is_file():
        return False
    if resume == "auto":
        return True
    try:
        return os.path.samefile(resume, own)
    except OSError:  # no such checkpoint: load_checkpoint says so
        return False


def _aside_dir(run_dir: Path) -> Path:
    """A new sibling folder ``<name>.old-<UTC time>`` (``-2``, ``-3``, ... when taken) for a replaced run's files."""
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}"
    for i in range(1, 1000):
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}" + (f"-{i}" if i > 1 else ""))
        try:
            target.mkdir()
            return target
        except FileExistsError:
            continue
    raise RunFolderError(f"no free folder name to move {run_dir}'s old run aside ({target} and 998 more exist)")


def _move_aside(run_dir: Path) -> Path:
    """Move the run files of ``run_dir`` (gdzoo's own; other files stay) to a new ``<name>.old-<time>`` folder."""
    target = _aside_dir(run_dir)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, target / name)
    return target


def _refusal(run_dir: Path, progress: list[str]) -> RunFolderError:
    return RunFolderError(
        f"run folder {run_dir} already holds a run ({', '.join(progress)}); continue it with --resume, replace it with "
        f"--overwrite (its files move to {run_dir.name}.old-<time>/ beside it), or choose another --name")


def claim_run_dir(run_dir: Path, resume: str | None, overwrite: bool) -> tuple[FolderLock, Path | None]:
    """Create and lock ``run_dir`` for a run (``resume`` = ``train.resume``, ``overwrite`` = ``output.overwrite``).

    Refuses (:class:`RunFolderError`, before changing anything in the folder) when the run would start afresh (or
    from another checkpoint) over a run with progress and ``overwrite`` is off, or when another live process holds
    the folder. With ``overwrite`` the old run's files move to a new sibling ``<name>.old-<UTC time>/`` folder
    (returned), so nothing is lost even if the new run is killed at once. Stale temp files are then removed.
    Returns the held lock (release it when the run ends; the process's death releases it too) and that folder.
    """
    if overwrite and continues_run(resume, run_dir):
        raise RunFolderError(f"--overwrite starts {run_dir} afresh and --resume continues its last.pth: choose one")
    progress = [] if continues_run(resume, run_dir) else run_progress(run_dir)
    if progress and not overwrite:
        raise _refusal(run_dir, progress)  # before the lock file is created: the folder stays untouched
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(run_dir)
    if not lock.acquire():
        pid = lock.holder()
        holder = f" (pid {pid})" if pid else ""
        raise RunFolderError(f"run folder {run_dir} is in use by another gdzoo process{holder}; "
                             "wait for it to end or choose another --name")
    try:
        moved = None
        if not continues_run(resume, run_dir) and (progress := run_progress(run_dir)):  # again, now that we hold it
            if not overwrite:
                raise _refusal(run_dir, progress)
            moved = _move_aside(run_dir)
        remove_stale_temp_files(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock, moved
