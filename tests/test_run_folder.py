"""Run folders are guarded: a run there is never started over silently, a live run's folder is locked (the lock dies
with its process), and temp files that killed atomic writes left are removed on the next run of the folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gdzoo.cli.main import main

REPO = Path(__file__).resolve().parents[1]
LOCK_NAME = ".gdzoo.lock"  # gdzoo._io.LOCK_NAME
TINY = ["--set", "data.train_subset=64", "--set", "data.val_size=32", "--set", "data.test_subset=32", "--epochs", "1",
        "--no-progress", "--set", "output.plots=false"]
# what a SIGKILL during atomic_write leaves: .<target>.<8 mkstemp characters>.tmp
STALE = (".last.pth.k3j_9x2a.tmp", ".metrics.csv.abcdefgh.tmp", ".best.safetensors.0a1b2c3d.tmp")
NOT_OURS = ("notes.tmp", ".x.tmp", ".last.pth.short.tmp", "last.pth.abcdefgh.tmp")


def _train(output: Path, name: str, *extra: str) -> int:
    return main(["train", "-c", str(REPO / "configs" / "tiny_fmnist.yaml"), "--output", str(output), "--name", name,
                 *TINY, *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> Path:
    """A finished tiny run folder (copy it before use)."""
    out = tmp_path_factory.mktemp("finished")
    assert _train(out, "run") == 0
    return out / "run"


def _copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def _holder(folder: Path) -> subprocess.Popen:
    """Another live process that holds ``folder``'s lock (until killed)."""
    code = ("import sys, time; from gdzoo._io import FolderLock; lock = FolderLock(sys.argv[1]); "
            "print('held' if lock.acquire() else 'busy', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_finished_run_is_refused_without_resume_and_left_byte_identical(finished: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(finished, tmp_path)
    # a run folder written before the lock existed: refusing must not even add one
    (run / LOCK_NAME).unlink(missing_ok=True)
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(tmp_path, "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(run) in err and "--resume" in err and "--overwrite" in err and "--name" in err
    assert _snapshot(run) == before and sorted(p.name for p in run.iterdir()) == sorted(before)
    assert not list(tmp_path.glob("run.old-*"))


def test_a_partial_run_without_checkpoint_is_refused_too(finished: Path, tmp_path: Path) -> None:
    """Killed after an epoch's best weights and metrics row but before last.pth: still a run to lose."""
    run = _copy(finished, tmp_path)
    for name in ("last.pth", "final_metrics.json", "summary.txt"):
        (run / name).unlink()
    before = _snapshot(run)
    assert _train(tmp_path, "run") == 2
    assert _train(tmp_path, "run", "--resume") == 2  # nothing to resume from: starting over would still lose it
    assert _snapshot(run) == before


def test_a_run_killed_before_any_progress_starts_over(tmp_path: Path, single_thread: None) -> None:
    """config.yaml, classes.json and an empty metrics.jsonl: nothing to lose, so the folder is reused
    (the benchmarks)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: other\n")
    (run / "classes.json").write_text("[]\n")
    (run / "metrics.jsonl").write_text("")
    (run / "train.log").write_text("the benchmark runner's log\n")
    assert _train(tmp_path, "run") == 0
    assert (run / "final_metrics.json").is_file() and (run / "train.log").read_text() == "the benchmark runner's log\n"
    assert "name: tiny_fmnist" in (run / "config.yaml").read_text() and not list(tmp_path.glob("run.old-*"))


def test_overwrite_moves_the_old_run_aside_before_starting(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    (run / "train.log").write_text("not gdzoo's\n")
    old = {k: v for k, v in _snapshot(run).items() if k not in (LOCK_NAME, "train.log")}
    assert _train(tmp_path, "run", "--overwrite", "--seed", "7") == 0
    (aside,) = tmp_path.glob("run.old-*")
    assert _snapshot(aside) == old  # every file of the old run, unchanged
    assert (run / "train.log").read_text() == "not gdzoo's\n"  # files gdzoo did not write stay
    assert "seed: 7" in (run / "config.yaml").read_text() and "overwrite: false" in (run / "config.yaml").read_text()
    assert json.loads((run / "final_metrics.json").read_text())["split"] == "test"
    assert (run / "last.pth").read_bytes() != old["last.pth"]
    assert _train(tmp_path, "run", "--overwrite", "--resume") == 2  # contradictory


def test_a_folder_held_by_a_live_process_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / STALE[0]).write_bytes(b"a live writer's temp file")
    holder = _holder(run)
    try:
        capsys.readouterr()
        assert _train(tmp_path, "run") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(run) in err
        assert f"in use by another gdzoo process (pid {holder.pid})" in err
        # nothing written, nothing removed
        assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_NAME, STALE[0]])
        assert _train(tmp_path, "run", "--resume") == 2
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path: Path, single_thread: None) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run / LOCK_NAME).read_text().strip() == str(holder.pid)  # its lock file stays behind
    assert _train(tmp_path, "run") == 0
    assert (run / "final_metrics.json").is_file()


def test_stale_temp_files_are_removed_on_the_next_run(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    from gdzoo._io import is_atomic_temp

    for name in STALE + NOT_OURS:
        (run / name).write_bytes(b"x" * 1000)
    assert all(is_atomic_temp(n) for n in STALE) and not any(is_atomic_temp(n) for n in NOT_OURS)
    assert _train(tmp_path, "run", "--resume") == 0  # continues the finished run: evaluates and reports again
    names = {p.name for p in run.iterdir()}
    assert not names & set(STALE) and set(NOT_OURS) <= names


def test_predict_removes_its_stale_temp_files(finished: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (28, 28), 128).save(images / "a.png")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "other").mkdir()
    (out / ".predictions.csv.abcdefgh.tmp").write_bytes(b"x" * 1000)
    (out / "sub" / ".a_mask.png.abcdefgh.tmp").write_bytes(b"x")
    (out / "other" / LOCK_NAME).write_text("")  # another folder's own lock: its temp files are its own business
    (out / "other" / ".b_mask.png.abcdefgh.tmp").write_bytes(b"x")
    (out / "notes.tmp").write_text("kept")
    assert main(["predict", str(images), "--checkpoint", str(finished / "best.safetensors"), "-o", str(out)]) == 0
    assert not (out / ".predictions.csv.abcdefgh.tmp").exists() and not (out / "sub"
                                                                         / ".a_mask.png.abcdefgh.tmp").exists()
    assert (out / "other" / ".b_mask.png.abcdefgh.tmp").exists() and (out / "notes.tmp").exists()
    assert (out / "predictions.csv").is_file()


def test_predict_keeps_temp_files_while_another_process_holds_the_folder(finished: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (28, 28), 128).save(images / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".predictions.csv.abcdefgh.tmp").write_bytes(b"x")
    holder = _holder(out)
    try:
        assert main(["predict", str(images), "--checkpoint", str(finished / "best.safetensors"), "-o", str(out)]) == 0
        assert (out / ".predictions.csv.abcdefgh.tmp").exists()
    finally:
        holder.kill()
        holder.wait()
