"""The Table-1 scripts' commands resolve to the recipes docs/table1.md describes
(checked through `gdzoo train --print-config`)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from gdzoo.cli.main import main as gdzoo_main

import table1
import table1_variants


def resolved(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(REPO)  # the scripts name recipes relative to the repository root
    assert gdzoo_main([*args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(("n", "steps_per_epoch", "epochs"),
                         [(1000, 32, 188), (5000, 157, 39), (10000, 313, 30), (30000, 938, 30), (60000, 1875, 30)])
def test_schedule_rule(n: int, steps_per_epoch: int, epochs: int) -> None:
    """epochs = max(30, ceil(6000 / ceil(n / 32))), warmup = 200 steps, as the doc says."""
    s = table1.schedule(n)
    assert (s["steps_per_epoch"], s["epochs"]) == (steps_per_epoch, epochs)
    assert s["warmup_epochs"] * steps_per_epoch == pytest.approx(200, abs=1e-3)


def test_subset_cell_selects_on_validation(capsys, monkeypatch) -> None:
    cfg = resolved(table1.train_args("gd_fmnist_sep", 5000, 2), capsys, monkeypatch)
    assert cfg["model"]["name"] == "gd_fmnist_sep"
    assert (cfg["data"]["train_subset"], cfg["data"]["val_size"], cfg["data"]["split_seed"]) == (5000, 5000, 2)
    assert (cfg["train"]["seed"], cfg["train"]["epochs"], cfg["data"]["batch_size"]) == (2, 39, 32)
    assert cfg["output"]["name"] == "table1/gd_fmnist_sep_5000_s2" and not cfg["output"]["export"]
    assert not cfg["augment"]["enabled"] and cfg["optim"]["weight_decay"] == 0


def test_rfnn_rerun_republishes_its_table1_file(capsys, monkeypatch) -> None:
    """The fixed-geometry RFNN rerun replaces ``rfnn_fmnist.fmnist_table1`` (which learned its geometry), not the zoo's
    ``rfnn_fmnist.fmnist``; the learned-geometry runs are an ablation table of their own."""
    assert table1.zoo_published("rfnn_fmnist")
    rfnn = resolved(table1.train_args("rfnn_fmnist", 60000, 0), capsys, monkeypatch)["output"]
    assert rfnn["export"] and rfnn["export_tag"] == "fmnist_table1"
    cells = {("rfnn_fmnist", 1000): [{"test_top1": 83.0, "seed": s} for s in range(3)]}
    assert "done at 1000 samples; not yet at 5000, 10000, 30000, 60000" in table1.rfnn_note(cells)
    ablation = "\n".join(table1.rfnn_ablation(cells))
    assert "| 1000 | 83.00 ± 0.00 |" in ablation and "| 60000 | not run yet | 91.89 | — |" in ablation


def test_full_cell_trains_on_everything_and_exports_until_a_zoo_final_replaces_it(capsys, monkeypatch,
                                                                                  tmp_path) -> None:
    monkeypatch.setattr(table1, "ZOO_FINAL", tmp_path)
    cfg = resolved(table1.train_args("gd_fmnist", 60000, 0), capsys, monkeypatch)
    assert cfg["data"]["train_subset"] is None and cfg["data"]["val_size"] == 0
    assert cfg["output"]["export"] and cfg["output"]["export_tag"] == "fmnist"
    assert not resolved(table1.train_args("gd_fmnist_few", 60000, 0), capsys, monkeypatch)["output"]["export"]
    (tmp_path / "gd_fmnist.json").write_text(json.dumps({"model": "gd_fmnist", "test_top1": 93.0, "published": False}))
    # kept: still Table 1's
    assert resolved(table1.train_args("gd_fmnist", 60000, 0), capsys, monkeypatch)["output"]["export"]
    (tmp_path / "gd_fmnist.json").write_text(json.dumps({"model": "gd_fmnist", "test_top1": 93.0, "published": True}))
    assert not resolved(table1.train_args("gd_fmnist", 60000, 0), capsys, monkeypatch)["output"]["export"]
    assert resolved(table1.train_args("ff_fmnist", 60000, 0), capsys, monkeypatch)["output"]["export"]
    sentence = table1.published_weights_sentence()
    assert "For `gd_fmnist_sep`, `ff_fmnist`, `rfnn_fmnist` this run is exported" in sentence
    assert "The published weights of `gd_fmnist` come from the zoo recipe" in sentence
    superseded = tmp_path / "superseded" / "augment" / "ff_fmnist.json"  # an earlier zoo recipe's final that published
    superseded.parent.mkdir(parents=True)
    superseded.write_text(json.dumps({"model": "ff_fmnist", "test_top1": 91.0, "published": True}))
    assert not resolved(table1.train_args("ff_fmnist", 60000, 0), capsys, monkeypatch)["output"]["export"]
    assert "ff_fmnist" not in table1.load_zoo_finals()  # not a final of the current recipe


def test_zoo_row_sits_beside_the_protocol(monkeypatch, tmp_path) -> None:
    """The zoo recipe's finals get a row of their own in the README block, with the paper's 60000 in brackets."""
    monkeypatch.setattr(table1, "ZOO_FINAL", tmp_path)
    cells = table1.load_results()
    assert not any(line.startswith(f"| {table1.ZOO_ROW} |") for line in table1.readme_block(cells))
    for model, top1 in {"ff_fmnist": 91.0, "rfnn_fmnist": 92.25, "gd_fmnist": 93.5}.items():
        (tmp_path / f"{model}.json").write_text(json.dumps({"model": model, "test_top1": top1}))
    row = next(line for line in table1.readme_block(cells) if line.startswith(f"| {table1.ZOO_ROW} |"))
    assert row == "| 60000, zoo recipe | 91.00 (89.3) | 92.25 (91.2) | — (92.1) | 93.50 (93.1) | — (92.8) | — (91.4) |"


def test_variant_changes_only_its_overrides(capsys, monkeypatch) -> None:
    base = resolved(table1.train_args("rfnn_fmnist", 10000, 0), capsys, monkeypatch)
    aug = resolved(table1_variants.variant_args("augment", "rfnn_fmnist", 10000, 0), capsys, monkeypatch)
    assert aug["output"]["name"] == "table1_variants/augment/rfnn_fmnist_10000_s0"
    assert aug["augment"]["enabled"] and aug["augment"]["scale"] == [0.8, 1.0] and aug["augment"]["hflip"] == 0.5
    for section in ("model", "data", "sched", "train", "optim"):
        assert aug[section] == base[section], section
    wd = resolved(table1_variants.variant_args("weight_decay", "rfnn_fmnist", 10000, 0), capsys, monkeypatch)
    assert (wd["optim"]["opt"], wd["optim"]["weight_decay"]) == ("adamw", 0.05)
    assert wd["data"] == base["data"] and wd["augment"] == base["augment"]


def test_full_size_variant_never_exports(capsys, monkeypatch) -> None:
    """At 60000 a variant trains like the protocol's cell (no validation split) but never overwrites weights/."""
    cfg = resolved(table1_variants.variant_args("augment", "gd_fmnist", 60000, 0), capsys, monkeypatch)
    assert cfg["data"]["val_size"] == 0 and cfg["augment"]["enabled"] and not cfg["output"]["export"]
    assert cfg["output"]["name"] == "table1_variants/augment/gd_fmnist_60000_s0"
    with pytest.raises(ValueError, match="1..60000"):
        table1_variants.variant_args("augment", "gd_fmnist", 60001, 0)


def test_readme_table_matches_the_committed_results() -> None:
    """README.md's Table-1 block is what benchmarks/table1.py writes from results/table1/
    (regenerate with --table-only)."""
    readme = (REPO / "README.md").read_text()
    start, end = table1.README_MARKERS
    block = start + readme.split(start, 1)[1].split(end, 1)[0] + end
    assert block == "\n".join(table1.readme_block(table1.load_results()))


def test_run_queue_stops_after_a_kill_and_reports_failures(tmp_path) -> None:
    from _runs import Log, run_queue

    outcomes = {"a": "done", "b": "failed", "c": "killed", "d": "done"}
    ran, refreshed = [], []

    def run(cell: str, kill_at) -> str:
        ran.append(cell)
        return outcomes[cell]

    log = Log(tmp_path / "log.txt")
    assert run_queue(list(outcomes), run, lambda: refreshed.append(len(ran)), log) == 1
    assert ran == ["a", "b", "c"] and refreshed == [1, 2, 3]  # after each finished cell and once at the end
    ran.clear()
    assert run_queue(["a", "d", "a"], run, lambda: None, log, max_cells=2) == 0 and ran == ["a", "d"]
    ran.clear()
    a_minute_ago = f"{dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1):%H:%M}"
    assert run_queue(["a"], run, lambda: None, log, stop_at=a_minute_ago) == 0 and ran == []  # launches nothing


def test_dau_recipe_is_the_protocol_with_another_model(capsys, monkeypatch) -> None:
    """configs/table1/dau_fmnist.yaml resolves to gd_fmnist's cell except the model (and run names); never exported."""
    dau = resolved(table1.train_args("dau_fmnist", 5000, 1), capsys, monkeypatch)
    ours = resolved(table1.train_args("gd_fmnist", 5000, 1), capsys, monkeypatch)
    assert dau["model"] == dict(ours["model"], name="dau_fmnist")
    assert dau["output"]["name"] == "table1/dau_fmnist_5000_s1"
    for section in ("data", "optim", "sched", "train", "augment"):
        assert dau[section] == ours[section], section
    assert not resolved(table1.train_args("dau_fmnist", 60000, 0), capsys, monkeypatch)["output"]["export"]


def test_margins_take_the_best_baseline_that_ran() -> None:
    """A GD margin is against the best of Free-Form, RFNN and (where run) DAU-ConvNet; FF and RFNN are required."""
    means = {"ff_fmnist": 85.0, "rfnn_fmnist": 86.0, "gd_fmnist": 88.0, "gd_fmnist_few": 86.5}
    assert table1.margins(means) == pytest.approx({"gd_fmnist": 2.0, "gd_fmnist_few": 0.5})
    assert table1.best_baseline(means) == "rfnn_fmnist"
    with_dau = dict(means, dau_fmnist=87.0)
    assert table1.margins(with_dau) == pytest.approx({"gd_fmnist": 1.0, "gd_fmnist_few": -0.5})
    assert table1.best_baseline(with_dau) == "dau_fmnist"
    assert table1.margins({k: v for k, v in with_dau.items() if k != "rfnn_fmnist"}) == {}
    assert table1.MODELS[:3] == table1.BASELINES and "dau_fmnist" not in table1.PUBLISHED


def test_a_cell_resumed_on_another_device_says_so_and_is_timed_on_the_last_one(tmp_path) -> None:
    """A 60000 cell started on a GPU and resumed on CPU: both devices named, speed from the CPU's whole epochs only."""
    run = tmp_path / "dau_fmnist_60000_s0"
    run.mkdir()
    (run / "final_metrics.json").write_text(json.dumps({"top1": 91.234, "samples": 10000}))
    gpu = [{"epoch": e, "train_top1": 90.0, "train_img_per_s": 2000.0, "train_time_s": 30.0} for e in range(10)]
    cpu = [{"epoch": e, "train_top1": 95.0, "train_img_per_s": 250.0, "train_time_s": 240.0} for e in range(10, 30)]
    split = [{"epoch": 9, "train_top1": 91.0, "train_img_per_s": 260.0, "train_time_s": 96.0}]  # its CPU part
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gpu[:9] + split + cpu))
    (run / "train.log").write_text(
        "t: d (classification), 1 params; train 60000; 1 x cuda:0, batch 32, 1875 steps/epoch -> r\nepoch 1/30 ...\n"
        "=== resume\nresumed from r/last.pth: epoch 10, batch 1125, step 18000\n"
        "t: d (classification), 1 params; train 60000; 1 x cpu, batch 32, 1875 steps/epoch -> r\n")
    (run / "summary.txt").write_text("| device | cpu |\n")
    result = table1.collect_result("dau_fmnist", 60000, 0, run, 5000.0, 1)
    assert result["device"] == "cuda:0 (epochs 1–10), cpu (epochs 11–30)"
    assert result["sec_per_epoch"] == 240.0 and result["train_img_per_s"] == 250.0
    assert result["train_time_s"] == 9 * 30.0 + 96.0 + 20 * 240.0 and result["test_top1"] == 91.23
    (run / "train.log").write_text("t: 1 x cpu, batch 32\nresumed from r: epoch 4, batch 7, step 1\nt: 1 x cpu, batch "
                                   "32\n")
    same = table1.collect_result("dau_fmnist", 60000, 0, run, 5000.0, 1)
    assert same["device"] == "cpu" and same["sec_per_epoch"] == round((9 * 30 + 96 + 20 * 240) / 30, 3)


def test_run_training_restarts_a_cell_without_last_pth_and_resumes_one_with_it(tmp_path) -> None:
    """A cell killed after its best weights and a metrics row but before last.pth starts afresh (its files moved
    aside, not refused by the run-folder guard); a cell with last.pth resumes."""
    from _runs import Log, run_training

    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "best.safetensors").write_bytes(b"partial")
    (cell / "metrics.jsonl").write_text('{"epoch": 0}\n')
    args = ["train", "-c", "configs/tiny_fmnist.yaml", "--output", str(tmp_path), "--name", "cell", "--epochs", "1",
            "--no-progress",
            "--set", "data.train_subset=64", "--set", "data.val_size=32", "--set", "data.test_subset=32", "--set",
            "output.plots=false"]
    log = Log(tmp_path / "grid.log")
    assert run_training(args, cell, "cell", log, 1, None)[0] == "done", (cell / "train.log").read_text()[-2000:]
    (aside,) = tmp_path.glob("cell.old-*")
    assert (aside / "best.safetensors").read_bytes() == b"partial" and (cell / "final_metrics.json").is_file()
    assert run_training(args, cell, "cell", log, 1, None)[0] == "done", (cell / "train.log").read_text()[-2000:]
    assert "resumed from" in (cell / "train.log").read_text() and "resume cell" in (tmp_path / "grid.log").read_text()


def test_an_interrupted_run_carried_in_the_repository_resumes_on_another_machine(monkeypatch, tmp_path) -> None:
    """A killed cell's files go to results/carry/<name>/ (committed); a machine with no run folder puts them back
    and resumes from that checkpoint instead of starting afresh; the finished cell drops its carried copy."""
    import _runs

    monkeypatch.setattr(_runs, "CARRY", tmp_path / "carry")
    first, second = tmp_path / "first" / "cell", tmp_path / "second" / "cell"

    def args(epochs: int, output: Path) -> list[str]:
        return ["train", "-c", "configs/tiny_fmnist.yaml", "--name", "cell", "--epochs", str(epochs), "--no-progress",
                "--set", "data.train_subset=64", "--set", "data.val_size=32", "--set", "data.test_subset=32",
                "--set", "output.plots=false", "--output", str(output)]

    log = _runs.Log(tmp_path / "grid.log")
    assert _runs.run_training(args(1, first.parent), first, "cell", log, 1, None)[0] == "done"
    monkeypatch.setattr(_runs, "CARRY_MAX_BYTES", 100)  # a checkpoint too big to commit is not carried at all
    assert _runs.carry_run(first, "cell") is None and not (tmp_path / "carry" / "cell").exists()
    monkeypatch.undo()
    monkeypatch.setattr(_runs, "CARRY", tmp_path / "carry")
    carried = _runs.carry_run(first, "cell")
    assert (carried / "last.pth").read_bytes() == (first / "last.pth").read_bytes()
    assert not _runs.restore_carried_run(first, "cell")  # a machine with its own checkpoint keeps it
    status = _runs.run_training(args(2, second.parent), second, "cell", log, 1, None)[0]
    assert status == "done", (second / "train.log").read_text()[-2000:]
    assert "resumed from" in (second / "train.log").read_text() and "carry  cell: restored" in log.path.read_text()
    assert not carried.exists()


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_git_commits_every_file_a_carry_holds() -> None:
    """A carry is committed to reach the next machine: git must not ignore its checkpoint (``*.pth`` is ignored
    elsewhere), or the committed carry restores nothing and the run silently starts afresh."""
    import _runs

    carried = _runs.CARRY.relative_to(REPO) / "zoo_fmnist" / "final" / "gd_fmnist"
    names = ["last.pth", "metrics.csv", "metrics.jsonl", "train.log", "config.yaml", "classes.json"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *(str(carried / n) for n in names)], cwd=REPO,
                             capture_output=True, text=True)
    assert ignored.returncode == 1 and not ignored.stdout, f"git ignores carried files: {ignored.stdout}"


def test_a_cell_is_carried_under_its_run_folders_path(tmp_path) -> None:
    """zoo_fmnist's and table1's cells share names ('final/gd_fmnist'); their carried copies must not: a run under
    runs/ is carried at its path below runs/ (where the committed carries are), any other folder under its name."""
    import _runs

    run_dir = _runs.ROOT / "runs" / "zoo_fmnist" / "final" / "gd_fmnist"
    assert _runs.carry_name(run_dir, "final/gd_fmnist") == "zoo_fmnist/final/gd_fmnist"
    assert _runs.carry_name(tmp_path / "cell", "cell") == "cell"


def test_an_exporting_cell_records_the_new_weights_in_the_manifest(monkeypatch, tmp_path) -> None:
    """A cell that exports (the RFNN rerun's 60000 cell) runs ``gdzoo hub manifest`` after it, so the file it wrote is
    the one ``pretrained=True`` accepts; other cells do not."""
    calls = []
    monkeypatch.setattr(table1, "run_training", lambda *a, **k: ("done", 1.0))
    monkeypatch.setattr(table1, "collect_result", lambda *a,
                        **k: {"test_top1": 90.0, "val_top1": None, "best_epoch": 30,
                                                                     "epochs": 30})
    monkeypatch.setattr(table1, "RESULTS", tmp_path)
    monkeypatch.setattr(table1.subprocess, "run", lambda args, **k: calls.append(args[-2:]))
    log = lambda message: None  # noqa: E731
    assert table1.run_cell("rfnn_fmnist", 10000, 0, log, 1, None) == "done" and calls == []
    assert table1.run_cell("rfnn_fmnist", 60000, 0, log, 1, None) == "done" and calls == [["hub", "manifest"]]
