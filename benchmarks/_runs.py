"""Shared by the table scripts: a timestamped log, UTC deadlines, and one resumable ``gdzoo train`` process."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# An interrupted run's folder, committed so that the next machine resumes it (a session's machine does not last).
CARRY = ROOT / "results" / "carry"
CARRY_MAX_BYTES = 5 * 2**20  # a file bigger than this is not carried (the Fashion-MNIST checkpoints are < 1 MiB)


class Log:
    """Print a line with a UTC timestamp and append it to ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"[{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z] {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def utc_today_at(hhmm: str | None) -> dt.datetime | None:
    """``HH:MM`` (UTC) as the next such moment (today, or tomorrow if it has passed more than 12 h ago)."""
    if not hhmm:
        return None
    hour, minute = (int(x) for x in hhmm.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at < now - dt.timedelta(hours=12):
        at += dt.timedelta(days=1)
    return at


def git_commit(paths: tuple[str, ...] = ("gdzoo", "configs")) -> str | None:
    """Short HEAD commit, with ``+dirty`` when ``paths`` have uncommitted changes."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_HEADER = re.compile(r"\b\d+ x (\S+), batch \d+")
_RESUME = re.compile(r"^resumed from .*: epoch (\d+), batch (\d+)")


def device_segments(train_log: str) -> list[tuple[str, int]]:
    """Where a (possibly resumed) ``gdzoo train`` run trained: ``(device, first epoch, 0-based)`` per stretch.

    Each start or resume in ``train.log`` names its device (``… 1 x cuda:0, batch …``); a resume's ``resumed from
    …: epoch E, batch B`` line says where it picked up (E is 1-based, so the stretch's first *whole* epoch is E - 1
    when B is 0, else E). Consecutive stretches on one device merge.

        >>> device_segments("resumed from x: epoch 10, batch 1125, step 18000\\nnet: 1 x cpu, batch 32")
        [('cpu', 10)]
        >>> log = "m: 1 x cuda:0, batch 32\\nresumed from l: epoch 4, batch 0, step 9\\nm: 1 x cuda:0, batch 32"
        >>> device_segments(log + "\\nresumed from l: epoch 10, batch 1125, step 18000\\nm: 1 x cpu, batch 32")
        [('cuda:0', 0), ('cpu', 10)]
    """
    segments: list[tuple[str, int]] = []
    start = 0
    for line in train_log.splitlines():
        if resumed := _RESUME.match(line):
            epoch, batch = int(resumed.group(1)), int(resumed.group(2))
            start = epoch - 1 if batch == 0 else epoch
        elif header := _HEADER.search(line):
            if not segments or segments[-1][0] != header.group(1):
                segments.append((header.group(1), start))
            start = 0
    return segments


def _copy_files(source: Path, dest: Path, max_bytes: int | None = None) -> list[str]:
    """Copy ``source``'s plain files (not hidden ones) into a fresh ``dest``, each atomically; the names skipped
    for their size."""
    from gdzoo._io import atomic_write

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    skipped = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if max_bytes is not None and path.stat().st_size > max_bytes:
            skipped.append(path.name)
            continue
        atomic_write(dest / path.name, lambda tmp, path=path: shutil.copyfile(path, tmp))
    return skipped


def carry_name(run_dir: Path, name: str) -> str:
    """Where a run is carried under ``results/carry/``: its folder's path below ``runs/`` (``zoo_fmnist/final/...``,
    so two scripts' cells of the same name do not share one), else ``name``."""
    try:
        return run_dir.resolve().relative_to((ROOT / "runs").resolve()).as_posix()
    except ValueError:
        return name


def carry_run(run_dir: Path, name: str) -> Path | None:
    """Copy an interrupted run's files (checkpoint, metrics, log) to ``results/carry/<name>/``, to be committed;
    None (nothing carried) when its ``last.pth`` is over :data:`CARRY_MAX_BYTES`."""
    dest = CARRY / name
    if _copy_files(run_dir, dest, CARRY_MAX_BYTES).count("last.pth"):
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return dest


def restore_carried_run(run_dir: Path, name: str) -> bool:
    """Put a carried run back in ``run_dir`` when this machine has no checkpoint of its own; True if it did."""
    carried = CARRY / name
    if (run_dir / "last.pth").is_file() or not (carried / "last.pth").is_file():
        return False
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    _copy_files(carried, run_dir)
    return True


def run_training(args: list[str], run_dir: Path, name: str, log: Log, threads: int,
                 kill_at: dt.datetime | None) -> tuple[str, float]:
    """Run ``gdzoo <args>`` (adding ``--resume`` when ``run_dir/last.pth`` exists), its output to ``run_dir/train.log``.

    Returns ('done' | 'failed' | 'killed', wall seconds summed over this and earlier interrupted attempts).
    At ``kill_at`` the process is stopped; it resumes from its last checkpoint next time, on another machine too:
    the run's files are copied to ``results/carry/<name>/`` (commit them) and put back when ``run_dir`` has none.
    Without a ``last.pth`` the cell starts afresh with ``--overwrite``: what a run killed before its first checkpoint
    left (a ``best.safetensors``, metrics rows) cannot be resumed, and gdzoo moves it to ``<cell>.old-<time>/``
    instead of refusing the folder.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    carried_as = carry_name(run_dir, name)
    if restore_carried_run(run_dir, carried_as):
        log(f"carry  {name}: restored from {CARRY / carried_as} (an earlier machine's checkpoint)")
    args = list(args)
    resumed = (run_dir / "last.pth").is_file()
    args.append("--resume" if resumed else "--overwrite")
    wall_file = run_dir / "grid_wall_s.json"
    earlier = json.loads(wall_file.read_text())["wall_s"] if wall_file.is_file() else 0.0
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "gdzoo", *args]
    log(f"{'resume' if resumed else 'start '} {name}: {shlex.join(['gdzoo', *args])}")
    t0 = time.perf_counter()
    killed = False
    with open(run_dir / "train.log", "a", encoding="utf-8") as out:
        out.write(f"\n=== {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%SZ} {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            if kill_at is not None and dt.datetime.now(dt.timezone.utc) >= kill_at:
                log(f"kill   {name}: --kill-at reached; it resumes from its last checkpoint next time")
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                killed = True
                break
            time.sleep(2)
    wall = earlier + time.perf_counter() - t0
    wall_file.write_text(json.dumps({"wall_s": wall}) + "\n")
    if killed:
        if (run_dir / "last.pth").is_file():
            carried = carry_run(run_dir, carried_as)
            log(f"carry  {name}: checkpoint copied to {carried}; commit it to resume elsewhere" if carried else
                f"carry  {name}: last.pth is over {CARRY_MAX_BYTES} bytes: not carried (it resumes on this machine)")
        return "killed", wall
    if proc.returncode != 0 or not (run_dir / "final_metrics.json").is_file():
        log(f"FAIL   {name}: exit {proc.returncode}; see {run_dir / 'train.log'}")
        return "failed", wall
    shutil.rmtree(CARRY / carried_as, ignore_errors=True)  # finished: its result file replaces the carried checkpoint
    return "done", wall


def run_queue(cells: Sequence[Any], run_cell: Callable[[Any, dt.datetime | None], str], refresh: Callable[[], None],
              log: Log, stop_at: str | None = None, kill_at: str | None = None, max_cells: int | None = None) -> int:
    """Run ``cells`` one at a time with ``run_cell(cell, kill_at)`` ('done' | 'failed' | 'killed'), calling
    ``refresh()`` after each and at the end; stop at ``max_cells``, at ``stop_at`` (HH:MM UTC, launch nothing
    after) or after a kill at ``kill_at``. Returns the exit status: 1 if a cell failed, else 0."""
    stop, kill = utc_today_at(stop_at), utc_today_at(kill_at)
    log(f"queue: {len(cells)} cells to run; stop-at {stop}, kill-at {kill}")
    failures = 0
    for i, cell in enumerate(cells):
        if max_cells is not None and i >= max_cells:
            log(f"stop: --max-cells {max_cells} reached")
            break
        if stop is not None and dt.datetime.now(dt.timezone.utc) >= stop:
            log(f"stop: --stop-at {stop_at} reached; {len(cells) - i} cells left")
            break
        status = run_cell(cell, kill)
        failures += status == "failed"
        if status == "killed":
            break
        refresh()
    refresh()
    return 1 if failures else 0
