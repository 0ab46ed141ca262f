"""``gdzoo predict``: where outputs go and what they keep.

Runs into one output folder merge (nothing lost, also when one run starts while another is predicting); every output
lands inside ``-o`` whatever the input is called; ``-o`` may be an input folder; symlinks in input folders are
followed or reported, never silently dropped.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gdzoo  # registers the models with timm
import gdzoo.data.images
from gdzoo.cli.main import main

SEG = ["--model", "gd_unet", "--pretrained", "--batch-size", "4"]
CLS = ["--model", "gd_fmnist", "--pretrained", "--batch-size", "2"]


def tiny_rgb(path: Path, seed: int, size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def tiny_gray(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)).save(path, format="PNG")
    return path


def csv_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


def journal(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "predictions.json").read_text())


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------ item 2: runs into one -o merge


def test_classification_runs_into_one_folder_merge_by_input_path(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b, c = (tiny_gray(tmp_path / "in" / f"{n}.png", i) for i, n in enumerate("abc"))
    out = tmp_path / "out"
    assert main(["predict", *CLS, str(a), str(b), "-o", str(out)]) == 0
    assert main(["predict", *CLS, str(c), "-o", str(out)]) == 0
    assert "1 written" in capsys.readouterr().out.splitlines()[-1]
    rows = csv_rows(out)
    assert sorted(rows) == sorted(map(str, (a, b, c)))
    assert sorted(journal(out)["written"]) == sorted(rows)  # predictions.json agrees with the CSV
    assert journal(out)["last_run"]["written"] == [str(c)]

    # a re-predicted input replaces its own row only; an unreadable one gets an error row beside the others
    before = rows[str(a)]
    (tmp_path / "in" / "b.png").write_text("not an image any more")
    assert main(["predict", *CLS, str(a), str(b), "-o", str(out), "--overwrite"]) == 1
    capsys.readouterr()
    rows = csv_rows(out)
    assert sorted(rows) == sorted(map(str, (a, b, c))) and rows[str(a)] == before
    assert "not an image" in rows[str(b)]["error"] and rows[str(c)]["error"] == ""
    summary = journal(out)
    assert sorted(summary["written"]) == sorted(map(str, (a, c))) and list(summary["failed"]) == [str(b)]

    # other settings would mix two models' predictions in one table: refused, nothing touched; --overwrite replaces
    text = (out / "predictions.csv").read_text()
    assert main(["predict", *CLS, "--topk", "3", str(c), "-o", str(out)]) == 2
    assert "made with other settings" in capsys.readouterr().err
    assert (out / "predictions.csv").read_text() == text
    assert main(["predict", *CLS, "--topk", "3", str(c), "-o", str(out), "--overwrite"]) == 0
    assert "replacing" in capsys.readouterr().err
    assert list(csv_rows(out)) == [str(c)] and list(journal(out)["written"]) == [str(c)]


def test_a_run_finishing_while_another_predicts_into_the_same_folder_loses_no_rows(  # type: ignore[no-untyped-def]
        tmp_path: Path, capsys, monkeypatch) -> None:
    """Run B (other inputs) starts and finishes while run A is predicting: A's final write must keep B's rows."""
    first = [tiny_gray(tmp_path / "one" / f"a{i}.png", i) for i in range(3)]
    second = [tiny_gray(tmp_path / "two" / f"b{i}.png", 10 + i) for i in range(2)]
    out = tmp_path / "out"
    read_pil, calls = gdzoo.data.images.read_pil, []

    def meanwhile(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:  # run A is half-way: run B does all of its work now
            monkeypatch.setattr(gdzoo.data.images, "read_pil", read_pil)
            assert main(["predict", *CLS, *map(str, second), "-o", str(out)]) == 0
            monkeypatch.setattr(gdzoo.data.images, "read_pil", meanwhile)
        return read_pil(*a, **k)

    monkeypatch.setattr(gdzoo.data.images, "read_pil", meanwhile)
    assert main(["predict", *CLS, *map(str, first), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("2 written" in line for line in lines) and any("3 written" in line for line in lines)
    rows = csv_rows(out)
    assert sorted(rows) == sorted(map(str, first + second))
    assert all(r["prediction"] and not r["error"] for r in rows.values())
    assert sorted(journal(out)["written"]) == sorted(rows)
    assert not (out / ".predictions.csv.partial").exists()


def test_segmentation_runs_into_one_folder_keep_every_input_in_predictions_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = tiny_rgb(tmp_path / "a.png", 0), tiny_rgb(tmp_path / "b.png", 1)
    out = tmp_path / "out"
    assert main(["predict", *SEG, str(a), "-o", str(out)]) == 0
    assert main(["predict", *SEG, str(b), str(tmp_path / "missing.png"), "-o", str(out)]) == 1
    capsys.readouterr()
    summary = journal(out)
    assert sorted(summary["written"]) == [str(a), str(b)] and list(summary["failed"]) == [str(tmp_path / "missing.png")]
    tiny_rgb(tmp_path / "missing.png", 2)  # it turns up: no longer failed
    assert main(["predict", *SEG, str(tmp_path / "missing.png"), str(a), "-o", str(out)]) == 0
    capsys.readouterr()
    summary = journal(out)
    assert sorted(summary["written"]) == sorted(map(str, (a, b, tmp_path / "missing.png"))) and summary["failed"] == {}
    assert summary["last_run"]["skipped"] == [str(a)]


# ------------------------------------------------------------------------------- item 3: every output inside -o


@pytest.mark.parametrize("name", ["..png", "...png", ".png.png"])
def test_outputs_of_dot_named_inputs_stay_inside_the_output_folder(tmp_path: Path, capsys, name: str) -> None:  # type: ignore[no-untyped-def]
    image = tiny_rgb(tmp_path / "in" / name, 0)
    (tmp_path / "results_mask.png").write_bytes(b"someone else's file")
    out = tmp_path / "results"
    assert main(["predict", *SEG, str(image), "-o", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "results", "results_mask.png"]
    assert (tmp_path / "results_mask.png").read_bytes() == b"someone else's file"
    masks = list(out.glob("*_mask.png"))
    assert len(masks) == 1 and masks[0].parent == out and Image.open(masks[0]).size == (32, 24)


def test_distinct_dot_named_inputs_get_distinct_outputs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    names = ["..png", "...png", "%2E.png"]
    images = [tiny_rgb(tmp_path / "in" / n, i) for i, n in enumerate(names)]
    out = tmp_path / "out"
    assert main(["predict", *SEG, *map(str, images), "-o", str(out)]) == 0
    assert "3 written" in capsys.readouterr().out
    assert len(list(out.glob("*_mask.png"))) == len(list(out.glob("*_overlay.png"))) == len(names)
    assert files_under(tmp_path) - {"in", "out"} == {f"in/{n}" for n in names} | {f"out/{p}" for p in files_under(out)}


# ---------------------------------------------------------------------- item 7: -o equal to or inside an input folder


def test_output_folder_equal_to_the_input_folder(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "slides"
    tiny_rgb(folder / "a.png", 0)
    tiny_rgb(folder / "sub" / "b.png", 1)
    assert main(["predict", *SEG, str(folder), "-o", str(folder)]) == 0
    assert "2 written, 0 already done (skipped), 0 failed" in capsys.readouterr().out
    assert {"a_mask.png", "a_overlay.png", "sub/b_mask.png", "sub/b_overlay.png"} <= files_under(folder)
    # again: its own outputs are not inputs, the images are still found and already done
    assert main(["predict", *SEG, str(folder), "-o", str(folder)]) == 0
    assert "0 written, 2 already done (skipped), 0 failed" in capsys.readouterr().out
    assert not any("_mask_" in p or "_overlay_" in p for p in files_under(folder))
    # a file of the user's that merely looks like an output is an input, and is never overwritten
    tiny_rgb(folder / "c.png", 2)
    user_mask = tiny_rgb(folder / "c_mask.png", 3)
    data = user_mask.read_bytes()
    assert main(["predict", *SEG, str(folder), "-o", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "c.png" in err and "would overwrite" in err
    assert user_mask.read_bytes() == data and (folder / "c_mask_mask.png").is_file()


def test_output_folder_inside_the_input_folder_classification(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "photos"
    images = [tiny_gray(folder / f"{i}.png", i) for i in range(2)]
    tiny_gray(folder / "preds" / "inside.png", 5)  # an image of the user's that happens to sit in -o
    for out in (folder, folder / "preds"):
        assert main(["predict", *CLS, str(folder), "-o", str(out)]) == 0
        assert "3 written" in capsys.readouterr().out
        assert sorted(csv_rows(out)) == sorted(map(str, [*images, folder / "preds" / "inside.png"]))


# ------------------------------------------------------------------------------ item 8: symlinks in input folders


def test_symlinks_in_input_folders_are_followed_or_reported(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    tiny_rgb(folder / "a.png", 0)
    tiny_rgb(elsewhere / "b.png", 1)
    os.symlink(elsewhere, folder / "linked")
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    os.symlink(folder, elsewhere / "loop")  # a cycle: in/linked/loop is in/
    out = tmp_path / "out"
    assert main(["predict", *SEG, str(folder), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("gdzoo predict: failed")]
    assert len(errors) == 1 and str(folder / "dangling.png") in errors[0] and "symbolic link" in errors[0]
    assert "2 written, 0 already done (skipped), 1 failed" in captured.out
    assert {"a_mask.png", "linked/b_mask.png"} == {p for p in files_under(out) if p.endswith("_mask.png")}
    assert str(folder / "dangling.png") in journal(out)["failed"]
