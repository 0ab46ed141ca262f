#!/usr/bin/env python
"""Fashion-MNIST zoo recipe (issue 15): choose one recipe on validation data, train every column with it on all
60000 images, publish ``weights/<model>.fmnist`` and write ``docs/zoo_fmnist.md``.

* ``--search``: each stage of ``SEARCH_STAGES`` trains its candidates (overrides of ``configs/zoo/<model>.yaml``) on
  ``SEARCH_MODELS``, on 20000 (stage ``search``) or 55000 (``search_full``) of the 60000 training images, and scores
  the last epoch on 5000 other training images (``data.evaluate_test=false``: the test set is never read). The
  candidate with the best mean last-epoch validation top-1 over the columns, in the latest stage that has run every
  candidate on every column, is the zoo recipe, and ``configs/zoo/base.yaml`` is that candidate.
* ``--final``: ``configs/zoo/<model>.yaml`` as written (all 60000 images, no validation split, the last epoch's
  weights), exported to ``runs/zoo_fmnist/export/<model>.fmnist``; the test top-1 goes to the card and to
  docs/table1.md's "zoo recipe" row. The export then replaces ``weights/<model>.fmnist`` unless it scores below the
  weights it would replace (``publish``), and ``gdzoo hub manifest`` records the new files.

Both stages skip finished cells (``results/zoo_fmnist/...json``) and resume interrupted ones; two runners with
disjoint ``--models`` use two cores. A cell stopped by ``--kill-at`` leaves its checkpoint in
``results/carry/zoo_fmnist/...``: commit it, and a runner on another machine resumes from it.

Usage::

    nohup python benchmarks/zoo_fmnist.py --search --models gd_fmnist > runs/zoo_fmnist/search_gd.out 2>&1 &
    python benchmarks/zoo_fmnist.py --final --models gd_fmnist ff_fmnist rfnn_fmnist --kill-at 11:50
    python benchmarks/zoo_fmnist.py --table-only     # regenerate docs/zoo_fmnist.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gdzoo.hub.card import card_metrics
from gdzoo.hub.export import swap_into_place

from _runs import ROOT, Log, cpu_name, git_commit, run_queue, run_training
from table1 import BASELINES, FULL, MODELS, PAPER, ZOO_FINAL, load_superseded_zoo_finals, load_zoo_finals, read_jsonl

RESULTS = ROOT / "results" / "zoo_fmnist"
RUNS = ROOT / "runs" / "zoo_fmnist"
DOC = ROOT / "docs" / "zoo_fmnist.md"
# The recipe is chosen on one baseline and the GD model. rfnn_fmnist's search cells would cost as much CPU as
# gd_fmnist's (about 35 min each on one core); it gets the chosen recipe like every other column.
SEARCH_MODELS = ["ff_fmnist", "gd_fmnist"]
SEARCH_TRAIN, SEARCH_VAL = 20000, 5000
PAPER_OURS = PAPER[FULL]["gd_fmnist"]  # the paper's "Ours" at 60000 (Table 1): issue 15's target
STRETCH = 93.5  # issue 15's stretch target for gd_fmnist
# A training top-1 (without augmentation) less than this many points above the test top-1 reads as underfitting.
# Table 1's paper-protocol gd_fmnist, which overfits, scores 99.22 on its 60000 training images against 92.56 on the
# test set:
#   gdzoo eval --model gd_fmnist --checkpoint weights/gd_fmnist.fmnist_table1 --set data.val_size=0 \
#     --set data.train_subset=null --split train
UNDERFIT_GAP = 2.0
# tried before the zoo recipe
AUGMENT_AT_FULL = ROOT / "results" / "table1_variants" / "augment" / "gd_fmnist_60000_s0.json"
# name -> (what it is, the settings that tell the candidates apart, set on configs/zoo/<model>.yaml). Every candidate
# sets all of them, so its meaning does not depend on what base.yaml holds; base.yaml is the chosen one
# (BASE_CANDIDATE). A 60-epoch run of gd_fmnist on 55000 images takes about 3 h on one core of this machine (300 img/s):
# the longer schedules are a stage of their own (issue 33), resumable across sessions.
_LS_EMA_RE = ("flips, random resized crops, an EMA of the weights (decay 0.9995), label smoothing 0.1 and random "
              "erasing (p 0.25)")
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "augment": ("flips and random resized crops (area 80-100 %)",
                ["augment.re_prob=0", "train.label_smoothing=0", "train.ema=false", "train.epochs=30"]),
    "augment_ema": ("flips, random resized crops and an EMA of the weights (decay 0.9995)",
                    ["augment.re_prob=0", "train.label_smoothing=0", "train.ema=true", "train.epochs=30"]),
    "augment_ls_ema_re": (_LS_EMA_RE + ", 30 epochs",
                          ["augment.re_prob=0.25", "train.label_smoothing=0.1", "train.ema=true", "train.epochs=30"]),
    "augment_ls_ema_re_e60": (_LS_EMA_RE + ", 60 epochs",
                              ["augment.re_prob=0.25", "train.label_smoothing=0.1", "train.ema=true",
                               "train.epochs=60"]),
    "augment_ls_ema_re_e100": (_LS_EMA_RE + ", 100 epochs",
                               ["augment.re_prob=0.25", "train.label_smoothing=0.1", "train.ema=true",
                                "train.epochs=100"]),
}
BASE_CANDIDATE = "augment_ls_ema_re_e100"  # the candidate configs/zoo/base.yaml is (test_zoo_fmnist_script checks it)
EXPORT_ROOT = "runs/zoo_fmnist/export"  # final runs export here; publish() copies the folder into weights/


def learned_fixed_geometry(model: str, folder: Path) -> bool:
    """Whether the weights in ``folder`` carry another Gaussian geometry (``*_raw``) than the one the architecture
    fixes."""
    import timm
    import torch
    from safetensors.torch import load_file

    state, fresh = load_file(folder / "model.safetensors"), timm.create_model(model).state_dict()
    return any(not torch.equal(state[k], fresh[k]) for k in state if k.endswith("_raw"))


# Checks that a published file is not the model its name promises: a correct final replaces such a file whatever it
# scores. model -> (why, check(model, published folder) -> True when the file is wrong).
NOT_WHAT_THE_NAME_PROMISES = {
    "rfnn_fmnist": ("the published file had learned its Gaussian geometry, which RFNN fixes (RFNN correction in "
                    "docs/table1.md)",
                    learned_fixed_geometry),
}


def _warmup(train_images: int, batch: int = 32, steps: int = 200) -> str:
    """``sched.warmup_epochs`` of 200 optimizer steps, as the final runs (0.106667 of 1875 steps)."""
    return f"sched.warmup_epochs={steps / -(-train_images // batch):.6f}"


@dataclass(frozen=True)
class SearchStage:
    """One round of the recipe search: candidates trained on ``train`` images, scored on ``val`` others."""

    name: str  # results/zoo_fmnist/<name>/<candidate>/<model>.json and runs/zoo_fmnist/<name>/...
    train: int
    candidates: tuple[str, ...]
    why: str
    val: int = 5000

    def settings(self) -> list[str]:
        subset = "null" if self.train + self.val == FULL else str(self.train)  # null: every image not held out
        return [f"data.train_subset={subset}", f"data.val_size={self.val}", "data.evaluate_test=false",
                _warmup(self.train), "train.eval_every=5",
                f"train.checkpoint_every_steps={500 if self.train > 20000 else 0}"]


# The later stage, once it has run every candidate on every column, decides; until then the earlier one does.
SEARCH_STAGES = (
    SearchStage("search", SEARCH_TRAIN, ("augment", "augment_ls_ema_re"),
                "a third of the data, for CPU; its choice underfits at 60000 images (see the final runs)"),
    SearchStage("search_full", FULL - SEARCH_VAL, ("augment_ema", "augment_ls_ema_re"),
                "the final size, because the regularisers chosen at 20000 images held the final runs back"),
    SearchStage("search_long", FULL - SEARCH_VAL,
                ("augment_ls_ema_re", "augment_ls_ema_re_e60", "augment_ls_ema_re_e100"),
                "the schedule: every final run underfits at 30 epochs (clean train top-1 less than 2 points above "
                "test)"),
)
STAGES = {stage.name: stage for stage in SEARCH_STAGES}


def search_args(candidate: str, model: str, stage: str = "search") -> list[str]:
    """``gdzoo train`` arguments of one search cell: the zoo file, the stage's split, the candidate's overrides."""
    sets = [*STAGES[stage].settings(), *CANDIDATES[candidate][1]]
    return ["train", "-c", f"configs/zoo/{model}.yaml", *[a for s in sets for a in ("--set", s)],
            "--name", f"zoo_fmnist/{stage}/{candidate}/{model}", "--no-progress"]


def final_args(model: str) -> list[str]:
    """``gdzoo train`` arguments of one final run: the zoo file as written, exported as ``<model>.fmnist`` to
    ``EXPORT_ROOT`` (``publish`` decides whether it replaces the published folder)."""
    return ["train", "-c", f"configs/zoo/{model}.yaml", "--no-progress", "--export",
            "--set", f"output.export_root={EXPORT_ROOT}"]


def publish(model: str, record: dict, log: Log | None = None) -> dict:
    """Replace ``weights/<model>.fmnist`` by the final run's export unless the export's test top-1 is below the
    published card's, so the default weights a user gets never get worse (a published file that is not the model its
    name promises is replaced either way); the record notes the decision."""
    staged, target = ROOT / EXPORT_ROOT / f"{model}.fmnist", ROOT / "weights" / f"{model}.fmnist"
    card = target / "README.md"
    replaced = card_metrics(card.read_text())["test/top1"] if card.is_file() else None
    why, wrong = NOT_WHAT_THE_NAME_PROMISES.get(model, (None, None))
    defect = why if replaced is not None and wrong is not None and wrong(model, target) else None
    record = {**record, "published": replaced is None or record["test_top1"] >= replaced or defect is not None,
              "replaced_top1": replaced, **({"replaced_because": defect} if defect else {})}
    if record["published"]:
        incoming = target.with_name(f".{target.name}.incoming")
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(staged, incoming)
        swap_into_place(incoming, target)  # as `gdzoo hub export` does: readers never see a half-written folder
    if log:
        log(f"{'publish' if record['published'] else 'keep   '} weights/{model}.fmnist: zoo final "
            f"{record['test_top1']}, published before {replaced}")
    return record


def collect(model: str, args: list[str], run_dir: Path, wall_s: float, threads: int) -> dict:
    """The commit-worthy record of a finished cell: last-epoch validation top-1 (search) or test top-1 (final)."""
    final = json.loads((run_dir / "final_metrics.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    last = max(rows, key=lambda r: r["epoch"])
    times = [r["train_time_s"] for r in rows if "train_time_s" in r]
    record = {
        "model": model,
        "epochs": last["epoch"] + 1,
        "last_train_top1": round(last["train_top1"], 2),
        "final_split": final["split"],
        "train_time_s": round(sum(times), 1),
        "sec_per_epoch": round(statistics.mean(times), 1) if times else None,
        "wall_s": round(wall_s, 1),
        "cpu": cpu_name(),
        "threads": threads,
        "command": shlex.join(["gdzoo", *args]),
        "git": git_commit(("gdzoo", "configs/zoo")),
        "finished_utc": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
    }
    # search: the last epoch's validation score (what the final run keeps is its last epoch)
    if final["split"] == "val":
        record["val_top1_last"] = round(last["val_top1"], 2)
        record["val_top1_best"] = round(max(r["val_top1"] for r in rows if "val_top1" in r), 2)
        record["val_samples"] = final["samples"]
    else:
        record["test_top1"] = round(final["top1"], 2)
        record["test_samples"] = final["samples"]
        record["train_top1_clean"] = clean_train_top1(run_dir, threads)
        record["recipe"] = BASE_CANDIDATE  # what configs/zoo/base.yaml was: finals of another recipe are not comparable
    return record


def clean_train_top1(run_dir: Path, threads: int = 1) -> float:
    """Top-1 of a finished run's weights on its own training images without augmentation (``gdzoo eval --split
    train``): next to the test top-1 it tells a recipe that holds the model back from one that lets it overfit."""
    out = run_dir / "train_split_metrics.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "-m", "gdzoo", "eval", "--checkpoint", str(run_dir), "--split", "train", "--output",
                    str(out)],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return round(json.loads(out.read_text())["top1"], 2)


def supersede_stale_finals(log: Log) -> list[str]:
    """Move the finals of another recipe than ``BASE_CANDIDATE`` (records and run folders) to ``superseded/<recipe>/``,
    so ``--final`` trains those columns afresh with the current one; returns their models."""
    moved = []
    for path in sorted(ZOO_FINAL.glob("*.json")):
        recipe = json.loads(path.read_text()).get("recipe", BASE_CANDIDATE)
        if recipe == BASE_CANDIDATE:
            continue
        moves = [(source, target) for source, target in ((path, ZOO_FINAL / "superseded" / recipe / path.name),
                 (RUNS / "final" / path.stem, RUNS / "superseded" / recipe / path.stem)) if source.exists()]
        for _, target in moves:  # check both before moving either
            if target.exists():
                raise FileExistsError(f"{target} exists: the {recipe} final of {path.stem} was superseded before")
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        moved.append(path.stem)
        log(f"supersede final/{path.stem}: recipe {recipe}, now {BASE_CANDIDATE}; it trains again")
    return moved


def run_cell(kind: str, cell: tuple, log: Log, threads: int, kill_at: dt.datetime | None) -> str:
    """Train one search ``(stage, candidate, model)`` or final ``(model,)`` cell and write its result file."""
    if kind == "search":
        stage, candidate, model = cell
        name = f"{stage}/{candidate}/{model}"
        args, out = search_args(candidate, model, stage), RESULTS / f"{name}.json"
    else:
        (model,) = cell
        args, name, out = final_args(model), f"final/{model}", ZOO_FINAL / f"{model}.json"
    status, wall = run_training(args, RUNS / name, name, log, threads, kill_at)
    if status == "done":
        record = collect(model, args, RUNS / name, wall, threads)
        if kind == "final":
            record = publish(model, record, log)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        log(f"done   {name}: "
            + ", ".join(f"{k} {record[k]}" for k in ("val_top1_last", "test_top1", "last_train_top1") if k in record))
    return status


def result_file(stage: str, candidate: str, model: str) -> Path:
    """Where a search cell's record is: its stage's file, or the file of an earlier stage with the same split that ran
    the same candidate (the same command, so it is not trained twice)."""
    own = RESULTS / stage / candidate / f"{model}.json"
    same = [s.name for s in SEARCH_STAGES if (s.train, s.val) == (STAGES[stage].train, STAGES[stage].val)]
    earlier = [RESULTS / s / candidate / f"{model}.json" for s in same[:same.index(stage)]]
    return next((p for p in [own, *earlier] if p.is_file()), own)


def load_search(stage: str) -> dict[str, dict[str, dict]]:
    """``{candidate: {model: record}}`` of one search stage's finished cells (:func:`result_file`)."""
    return {c: {m: json.loads(p.read_text()) for m in MODELS if (p := result_file(stage, c, m)).is_file()}
            for c in STAGES[stage].candidates}


def search_means(search: dict) -> dict[str, float]:
    """Mean last-epoch validation top-1 over ``SEARCH_MODELS`` of each candidate that ran on all of them."""
    return {c: statistics.mean(cells[m]["val_top1_last"] for m in SEARCH_MODELS)
            for c, cells in search.items() if all(m in cells for m in SEARCH_MODELS)}


def chosen_candidate(search: dict, candidates: tuple[str, ...]) -> str | None:
    """A stage's choice: the candidate with the best mean validation top-1
    (None until every one has run on every column)."""
    means = search_means(search)
    return max(means, key=means.get) if means and means.keys() == set(candidates) else None


def zoo_choice() -> tuple[str, str] | None:
    """``(stage, candidate)`` of the zoo recipe: the choice of the latest stage that has run every candidate on every
    column."""
    for stage in reversed(SEARCH_STAGES):
        chosen = chosen_candidate(load_search(stage.name), stage.candidates)
        if chosen is not None:
            return stage.name, chosen
    return None


def final_margins(final: dict) -> dict[str, float]:
    """Each GD column's test top-1 minus the best baseline's, among the final runs that exist."""
    base = [final[m]["test_top1"] for m in BASELINES if m in final]
    return {m: final[m]["test_top1"] - max(base) for m in MODELS if m not in BASELINES and m in final} if base else {}


def publication(record: dict) -> str:
    """What the final run did to the published weights, for the doc's table."""
    before = record.get("replaced_top1")
    if record.get("published"):
        because = f": {record['replaced_because']}" if record.get("replaced_because") else ""
        return "published" + (f" (replaced {before:.2f}{because})" if before is not None else "")
    return f"not published: the published {before:.2f} stays"


def target_verdict(final: dict) -> str:
    """Issue 15's targets for ``gd_fmnist`` (the paper's 93.1, stretch 93.5, ahead of every baseline that ran), met or
    missed by how much."""
    ours = final["gd_fmnist"]["test_top1"]
    base = {m: final[m]["test_top1"] for m in BASELINES if m in final}
    text = (f"`gd_fmnist` {ours:.2f}: {ours - PAPER_OURS:+.2f} against the paper's {PAPER_OURS} (\"Ours\"), "
            f"{ours - STRETCH:+.2f} against the stretch target {STRETCH}")
    if base:
        best = max(base, key=base.get)
        text += (f", {ours - base[best]:+.2f} against the best baseline with the same recipe "
                 f"(`{best}`, {base[best]:.2f})")
    text += "."
    if ours < PAPER_OURS:
        augment = json.loads(AUGMENT_AT_FULL.read_text())["test_top1"] if AUGMENT_AT_FULL.is_file() else None
        text += (" The target is missed. Tried: the candidates above (chosen on validation data), and before them "
                 "augmentation and weight decay under the paper's protocol (docs/table1_variants.md"
                 + (f"; augmentation at 60000 gave {augment:.2f}" if augment is not None else "")
                 + "). Longer schedules: stage `search_long` above. Not tried, for CPU: dropout, wider models.")
        clean = final["gd_fmnist"].get("train_top1_clean")
        if clean is not None:
            text += (f" On its 60000 training images without augmentation it scores {clean:.2f}, {clean - ours:.2f} "
                     "above its test top-1")
            text += (f", so at 60000 images the recipe holds the model back (it underfits) rather than letting it "
                     f"overfit. {search_verdict()}" if clean - ours < UNDERFIT_GAP else ".")
    return text


def search_verdict() -> str:
    """What the searches say about an underfitting final: which stage chose the recipe,
    and where the schedule stands."""
    first, full = STAGES["search"], STAGES["search_full"]
    search = load_search(full.name)
    chosen = chosen_candidate(search, full.candidates)
    if chosen is None:
        return (f"The recipe was chosen at {first.train} images, where the regularisers paid off; the search at "
                f"{full.train} images above tests a lighter recipe, and a longer schedule is the other thing to try.")
    means = search_means(search)
    others = ", ".join(f"`{c}` {m:.2f}" for c, m in means.items() if c != chosen)
    kept = chosen == chosen_candidate(load_search(first.name), first.candidates)
    return (f"The search at {full.train} images {'kept' if kept else 'chose'} `{chosen}` (mean validation top-1 "
            f"{means[chosen]:.2f}; {others})" + (", so a lighter recipe does not help at 30 epochs" if kept else "")
            + "; " + schedule_verdict())


def schedule_verdict() -> str:
    """Where the schedule stage (``search_long``: 30, 60, 100 epochs) stands, or what it chose."""
    stage = STAGES["search_long"]
    search = load_search(stage.name)
    chosen = chosen_candidate(search, stage.candidates)
    if chosen is None:
        done = sum(len(cells) for cells in search.values())
        return (f"a longer schedule is what is left to try: stage `{stage.name}` (30, 60 and 100 epochs) has "
                f"{done} of {len(stage.candidates) * len(SEARCH_MODELS)} cells.")
    means = search_means(search)
    return (f"the schedule stage chose `{chosen}` (mean validation top-1 {means[chosen]:.2f}; "
            + ", ".join(f"`{c}` {m:.2f}" for c, m in means.items() if c != chosen) + ").")


def search_table(stage: SearchStage, choice: tuple[str, str] | None) -> list[str]:
    """One stage's section of the doc: its validation top-1 per candidate and column, and its mean."""
    search = load_search(stage.name)
    means, chosen = search_means(search), chosen_candidate(search, stage.candidates)
    lines = [f"### Stage `{stage.name}`: {stage.train} training images", "", f"Why: {stage.why}. Validation top-1 (%):",
             "", "| candidate | recipe | " + " | ".join(f"`{m}`" for m in SEARCH_MODELS) + " | mean |",
             "|---|---|" + "---:|" * (len(SEARCH_MODELS) + 1)]
    for c in stage.candidates:
        cells, best = search.get(c, {}), c == chosen
        vals = [f"{cells[m]['val_top1_last']:.2f}" if m in cells else "not run yet" for m in SEARCH_MODELS]
        mean = f"{means[c]:.2f}" if c in means else "—"
        lines.append(f"| `{c}`{' (best)' if best else ''} | {CANDIDATES[c][0]} | " + " | ".join(vals)
                     + f" | {'**' + mean + '**' if best else mean} |")
    decided = "decides the zoo recipe" if choice and choice[0] == stage.name else "does not decide the recipe"
    status = (f"Best: `{chosen}`; this stage {decided}." if chosen
              else "Not every candidate has run on every column yet.")
    return lines + ["", status, ""]


def write_doc(log: Log | None = None) -> None:
    final, choice = load_zoo_finals(), zoo_choice()
    lines = ["# Fashion-MNIST zoo recipe", "",
             "<!-- Generated by `python benchmarks/zoo_fmnist.py --table-only`; edit the script, not this file. -->",
             "", "docs/table1.md reproduces the paper's protocol; the published `*.fmnist` weights are a different "
             "product: the best these architectures can be, trained by one recipe that is the same for every column "
             "(`configs/zoo/base.yaml`; `configs/zoo/<model>.yaml` only names the model).", "",
             "## Choosing the recipe on validation data", "",
             "A candidate trains on part of the 60000 training images and is scored after its last epoch on "
             f"{SEARCH_VAL} other training images, the same ones in every stage (split seed 0; "
             "`data.evaluate_test=false`, so no search run reads the test set). Last-epoch rather than best-epoch "
             "accuracy, because the final run keeps its last "
             "epoch. The recipe is the choice of the latest stage that has run every candidate on every column.", ""]
    for stage in SEARCH_STAGES:
        lines += search_table(stage, choice)
    lines += [f"The zoo recipe: `{choice[1]}` (stage `{choice[0]}`)." if choice
              else "No stage has run every candidate on every column yet.",
              "", "## Final runs: all 60000 training images, test top-1 on the 10,000 test images", ""]
    if final:
        clean = lambda r: f"{r['train_top1_clean']:.2f}" if "train_top1_clean" in r else "—"  # noqa: E731
        lines += ["| column | test top-1 | train top-1, no augmentation | last-epoch train top-1, augmented | epochs | "
                  "s / epoch | `weights/<model>.fmnist` |", "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| `{m}` | {final[m]['test_top1']:.2f} | {clean(final[m])} | {final[m]['last_train_top1']:.2f} | "
                  f"{final[m]['epochs']} | {final[m]['sec_per_epoch']} | {publication(final[m])} |" for m in MODELS
                  if m in final]
        lines += ["",
                  "The train top-1 without augmentation is the last epoch's weights scored on all 60000 training "
                  "images as the test set is scored (`gdzoo eval --checkpoint runs/zoo_fmnist/final/<model> --split "
                  "train`); the augmented one is the running mean over the last epoch's batches."]
        lines += ["",
                  "A final run replaces the published `<model>.fmnist` only when it does not score below the weights "
                  "it would replace, so the default weights never get worse, or when the published file is not the "
                  "model its name promises (`NOT_WHAT_THE_NAME_PROMISES`: Table 1's RFNN file had learned its "
                  "geometry); Table 1's paper-protocol runs stay published as `<model>.fmnist_table1` either way."]
        margins = final_margins(final)
        if margins:
            lines += ["",
                      "GD margin over the best baseline that ran: "
                      + ", ".join(f"`{m}` {d:+.2f}" for m, d in margins.items()) + "."]
        if "gd_fmnist" in final:
            lines += ["", target_verdict(final)]
    else:
        lines.append("No final run has finished yet.")
    for recipe, records in load_superseded_zoo_finals().items():
        lines += ["",
                  f"Final runs of an earlier recipe, `{recipe}` (not comparable with the table above; their published "
                  "files stay until a final of the current recipe replaces them): " + ", ".join(
                      f"`{m}` {r['test_top1']:.2f} ({publication(r)})" for m, r in records.items()) + "."]
    lines += ["", "## Commands", "", "```bash",
              "python benchmarks/zoo_fmnist.py --search    # every stage's candidates on " + ", ".join(SEARCH_MODELS)
              + " (resumable)",
              "python benchmarks/zoo_fmnist.py --final     # every column on all 60000 images; weights/<model>.fmnist "
              "when not worse",
              "python benchmarks/zoo_fmnist.py --table-only",
              shlex.join(["gdzoo", *search_args(BASE_CANDIDATE, "gd_fmnist", SEARCH_STAGES[-1].name)])
              + "   # one search cell",
              shlex.join(["gdzoo", *final_args("gd_fmnist")]) + "   # one final run", "```", "",
              "A cell stopped by `--kill-at` copies its checkpoint to `results/carry/zoo_fmnist/...` (commit it): the "
              "next runner, on any machine, resumes from it.", ""]
    DOC.write_text("\n".join(lines))
    if log:
        log(f"wrote {DOC.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stage = p.add_mutually_exclusive_group(required=True)
    stage.add_argument("--search", action="store_true",
                       help="the candidates on a validation split (never the test set)")
    stage.add_argument("--final", action="store_true", help="configs/zoo/<model>.yaml on all 60000 images, exported")
    stage.add_argument("--table-only", action="store_true", help="only regenerate docs/zoo_fmnist.md")
    p.add_argument("--models", nargs="+", choices=MODELS, help="columns to run (default: SEARCH_MODELS / all)")
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                   help="search stages to run (default: all)")
    p.add_argument("--stop-at", help="HH:MM UTC: launch no new cell after this time")
    p.add_argument("--kill-at", help="HH:MM UTC: stop the running cell at this time (it resumes next time)")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per training process (default 1)")
    args = p.parse_args(argv)
    log = Log(RUNS / "grid.log")
    if args.table_only:
        write_doc(log)
        return 0
    kind = "search" if args.search else "final"
    if kind == "search":
        models = args.models or SEARCH_MODELS
        cells = [(st, c, m) for st in args.stages for c in STAGES[st].candidates if c in args.candidates for m in models
                 if not result_file(st, c, m).is_file()]
    else:
        supersede_stale_finals(log)
        cells = [(m,) for m in args.models or MODELS if not (ZOO_FINAL / f"{m}.json").is_file()]

    def refresh() -> None:
        write_doc(log)
        if kind == "final":  # record the exported files' hashes, so pretrained=True accepts them
            subprocess.run([sys.executable, "-m", "gdzoo", "hub", "manifest"], cwd=ROOT, check=True)

    return run_queue(cells, lambda cell, kill: run_cell(kind, cell, log, args.threads, kill), refresh, log,
                     args.stop_at, args.kill_at)


if __name__ == "__main__":
    sys.exit(main())
