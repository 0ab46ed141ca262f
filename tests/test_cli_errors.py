"""Errors a user can fix end the CLI with one line on stderr naming the file or value and the fix, exit status 2,
no traceback (``--debug`` / ``GDZOO_DEBUG=1`` show it): issue 31, item 9."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gdzoo.cli.main import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = {
    "name": "tiny",
    "model": {"name": "ff_fmnist", "pretrained": False},
    "data": {"dataset": "fashion_mnist", "train_subset": 64, "val_size": 32, "test_subset": 32, "batch_size": 32},
    "optim": {"opt": "adam", "lr": 0.003},
    "train": {"epochs": 1, "seed": 0},
    "output": {"plots": False, "progress": False},
}


def _gdzoo(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "GDZOO_DEBUG"}
    full_env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env})
    return subprocess.run([sys.executable, "-m", "gdzoo", *args], env=full_env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def _one_line(rc: int, stderr: str, command: str, *needles: str) -> str:
    """Exit status 2, one line ``gdzoo <command>: ...`` on stderr holding every needle, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert rc == 2, stderr
    assert lines[0].startswith(f"gdzoo {command}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "weights_only=False" not in lines[0] and "weights_only` set to `False" not in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished one-epoch ff_fmnist run (adam): its recipe and its last.pth."""
    root = tmp_path_factory.mktemp("errors")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**RECIPE, "output": {**RECIPE["output"], "dir": str(root / "runs")}}))
    done = _gdzoo("train", "-c", str(config))
    assert done.returncode == 0, done.stderr
    last = root / "runs" / "tiny" / "last.pth"
    assert last.is_file()
    return config, last


# a. disk full while saving a checkpoint ------------------------------------------------------------------------------


def test_disk_full_names_the_file_and_keeps_the_last_checkpoint(run, tmp_path, monkeypatch, capsys) -> None:
    config, last = run
    run_dir = tmp_path / "runs" / "full"
    run_dir.mkdir(parents=True)
    shutil.copy(last, run_dir / "last.pth")
    before = (run_dir / "last.pth").read_bytes()

    def full_disk(obj, f, *args, **kwargs):  # what torch.save says when the disk fills up
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    real_usage = shutil.disk_usage
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = main(["train", "-c", str(config), "--output", str(tmp_path / "runs"), "--name", "full", "--epochs", "2",
               "--resume"])
    err = capsys.readouterr().err
    line = _one_line(rc, err, "train", "disk full", str(run_dir / "last.pth"), "last good checkpoint")
    assert "MiB free" in line
    assert (run_dir / "last.pth").read_bytes() == before  # the last good checkpoint is untouched
    assert not list(run_dir.glob(".last.pth.*"))  # no temp file left behind


# b. / c. resume into another optimizer / model -----------------------------------------------------------------------


def test_resume_with_another_optimizer_is_refused_before_resuming(run, tmp_path) -> None:
    config, last = run
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "b", "--epochs", "2",
                  "--resume", str(last), "--opt", "sgd")
    _one_line(done.returncode, done.stderr, "train", str(last), "optimizer adam", "sgd")
    assert "resumed" not in done.stdout


def test_resume_into_another_model_names_both(run, tmp_path) -> None:
    config, last = run
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "c", "--epochs", "2",
                  "--resume", str(last), "--model", "gd_fmnist")
    _one_line(done.returncode, done.stderr, "train", str(last), "ff_fmnist", "gd_fmnist")
    assert "resumed" not in done.stdout
    # the same model name with other shapes (3 input channels): the tensor that differs
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "c2", "--epochs", "2",
                  "--resume", str(last), "--set", "model.in_chans=3", GDZOO_DEBUG="1")
    assert done.returncode == 2 and "Traceback" in done.stderr  # GDZOO_DEBUG=1 shows where
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"gdzoo train: cannot resume from {last}: it holds ff_fmnist")
    assert "stem.conv.weight is (16, 1, 3, 3) there, (16, 3, 3, 3) here" in done.stderr


# d. a malicious / non-gdzoo checkpoint ------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_named_never_unpickled(run, tmp_path) -> None:
    config, _ = run
    evil, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"version": 1, "model": _Payload(marker)}, evil)
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "d", "--resume", str(evil))
    _one_line(done.returncode, done.stderr, "train", str(evil), "not a gdzoo checkpoint", "posix.system")
    done = _gdzoo("eval", "--model", "ff_fmnist", "--checkpoint", str(evil))
    _one_line(done.returncode, done.stderr, "eval", str(evil), "not a gdzoo checkpoint")
    assert not marker.exists()
    # --debug: the traceback, then the same line (still no advice to load it with weights_only=False)
    done = _gdzoo("--debug", "train", "-c", str(config), "--output", str(tmp_path), "--name", "d", "--resume",
                  str(evil))
    assert done.returncode == 2 and "Traceback" in done.stderr and "weights_only=False" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"gdzoo train: {evil} is not a gdzoo checkpoint")
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "d", "--resume", str(evil),
                  "--debug")
    assert done.returncode == 2 and "Traceback" in done.stderr  # after the command too


def test_damaged_checkpoint_is_named(run, tmp_path) -> None:
    config, last = run
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(last.read_bytes()[:2000])
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "d2", "--resume", str(damaged))
    _one_line(done.returncode, done.stderr, "train", str(damaged), "damaged")


# e. / f. local-dir: folders ------------------------------------------------------------------------------------------


def test_garbage_config_json_names_file_and_position(run, tmp_path) -> None:
    config, _ = run
    folder = tmp_path / "garbage"
    shutil.copytree(REPO / "weights" / "ff_fmnist.fmnist", folder)
    (folder / "config.json").write_text('{"architecture": "ff_fmnist", oops\n')
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "e", "--model",
                  f"local-dir:{folder}")
    _one_line(done.returncode, done.stderr, "train", str(folder / "config.json"), "not valid JSON", "line 1, column 31")


def test_wrong_architecture_folder_says_what_it_holds(run, tmp_path) -> None:
    config, _ = run
    folder = tmp_path / "wrongarch"
    shutil.copytree(REPO / "weights" / "gd_fmnist.fmnist", folder)
    text = (folder / "config.json").read_text().replace('"architecture": "gd_fmnist"', '"architecture": "gd_unet"')
    (folder / "config.json").write_text(text)
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "f", "--model",
                  f"local-dir:{folder}")
    _one_line(done.returncode, done.stderr, "train", str(folder), "holds gd_fmnist", "asks for gd_unet")
    done = _gdzoo("eval", "--model", "gd_unet", "--checkpoint", "weights/gd_fmnist.fmnist")
    _one_line(done.returncode, done.stderr, "eval", "weights/gd_fmnist.fmnist holds gd_fmnist", "gd_unet")


# g. model.in_chans=0 -------------------------------------------------------------------------------------------------


def test_in_chans_zero_is_refused_with_allowed_values(run, tmp_path) -> None:
    config, _ = run
    done = _gdzoo("train", "-c", str(config), "--output", str(tmp_path), "--name", "g", "--set", "model.in_chans=0")
    _one_line(done.returncode, done.stderr, "train", "model.in_chans", "got 0", ">= 1")
    assert not (tmp_path / "g").exists()


# h. a safetensors header bomb ----------------------------------------------------------------------------------------


def test_safetensors_header_bomb_is_named_damaged(tmp_path) -> None:
    bomb = tmp_path / "bomb.safetensors"
    bomb.write_bytes(struct.pack("<Q", 1 << 40) + b'{"a": 1}')
    done = _gdzoo("eval", "--model", "ff_fmnist", "--checkpoint", str(bomb))
    _one_line(done.returncode, done.stderr, "eval", str(bomb), "damaged or not a safetensors file", "1,099,511,627,776")


# i. a tampered shipped weights file ----------------------------------------------------------------------------------


def test_tampered_shipped_weights_one_line(run, tmp_path, monkeypatch, capsys) -> None:
    import gdzoo.models.shipped as shipped

    config, _ = run
    root = tmp_path / "shipped"
    shutil.copytree(REPO / "weights" / "ff_fmnist.fmnist", root / "ff_fmnist.fmnist")
    weights = root / "ff_fmnist.fmnist" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "shipped_roots", lambda: [root])
    rc = main(["train", "-c", str(config), "--output", str(tmp_path), "--name", "i", "--pretrained"])
    _one_line(rc, capsys.readouterr().err, "train", f"Shipped weights {weights} are damaged", "Reinstall gdzoo")


# j. a --checkpoint / --resume path that does not exist (issue #32, item 3) -------------------------------------------


@pytest.mark.parametrize("command", [
    ["eval", "--checkpoint", "{missing}"],
    ["eval", "--model", "ff_fmnist", "--checkpoint", "{missing}/best.safetensors"],
    ["predict", "{image}", "--checkpoint", "{missing}", "-o", "{out}"],
    ["predict", "{image}", "--model", "gd_unet", "--checkpoint", "{missing}", "-o", "{out}"],
    ["train", "-c", str(REPO / "configs" / "tiny_fmnist.yaml"), "--output", "{out}", "--resume", "{missing}/last.pth"],
    ["hub", "export", "gd_fmnist", "{missing}/best.safetensors", "--tag", "mine", "--root", "{out}"],
])
def test_missing_checkpoint_path_is_named_as_missing(command: list[str], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "runs" / "table3" / "gd_unet"
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    args = [a.format(missing=missing, image=image, out=tmp_path / "out") for a in command]
    rc = main(args)
    _one_line(rc, capsys.readouterr().err, command[0], str(missing), "does not exist")
    assert not (tmp_path / "out").exists()  # nothing written (train: no run folder)
