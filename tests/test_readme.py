"""README.md's ```python and ```bash blocks run as written, in a copy of the repository after `bash run.sh`
(issue #32, item 3).

Every block is extracted and run in README order, offline (``HF_HUB_OFFLINE=1``, empty HF and gdzoo caches) in a
temporary copy of the repository (so nothing here is written to: ``weights/``, the manifest, ``runs/``). A command is
run as written unless a rule of :data:`RULES` matches it; each rule says why. Unknown (new) commands run, so a
README command that needs the network or a GPU fails this test until it gets a rule here.

Speed: everything runs in one subprocess (one import of torch and timm), ``gdzoo`` commands in-process through
``gdzoo.cli.main.main``, other commands as subprocesses, each python block in a fresh namespace. Two rules shrink
training jobs by appending ``--set`` overrides (the later ``--set`` wins): the README's recipes train for minutes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _paths import MONUSEG, REPO

# The main job with sizes of a smoke test; it still fine-tunes the published gd_fmnist weights into
# runs/fmnist_finetune/ (the folder the later commands use) and evaluates it.
TINY_MAIN_JOB = ["--set", "data.train_subset=256", "--set", "data.val_size=64", "--set", "data.test_subset=256",
                 "--set", "train.epochs=1", "--set", "output.plots=false"]
TINY_TABLE1 = ["--set", "data.train_subset=128", "--set", "data.val_size=64", "--set", "data.test_subset=64",
               "--set", "train.epochs=1", "--set", "output.plots=false"]


@dataclass(frozen=True)
class Rule:
    """What to do with a README command matching ``pattern`` (a regex searched in the command, or in the python
    block): ``skip`` it, ``append`` arguments, or ``replace`` it by ``argv``; ``reason`` says why."""

    pattern: str
    action: str
    reason: str
    argv: tuple[str, ...] = ()
    section: str | None = None  # matches every command of this README section instead of a pattern


RULES: tuple[Rule, ...] = (
    Rule(r"^bash run\.sh test\b", "skip",
         "the whole test suite, this file included; CI (.ci/run) runs exactly this command"),
    Rule(r"^bash run\.sh$", "replace",
         "run.sh sets up .venv (CI's job) and then runs its main job, `gdzoo train --overwrite` (26 s on an idle "
         "2-core CPU, per the README): run here as that command with TINY_MAIN_JOB's sizes appended",
         argv=("gdzoo", "train", "--overwrite", *TINY_MAIN_JOB)),
    Rule(r"^torchrun ", "skip",
         "4 processes on 4 GPUs with bf16 AMP (the full Table-3 recipe); DDP runs with 2 gloo processes in "
         "tests/test_training_ddp.py"),
    Rule(r"^gdzoo train -c configs/fmnist_table1\.yaml", "append",
         "the recipe trains 30 epochs with 5000 validation images; TINY_TABLE1's sizes are appended to both the run "
         "and its --resume (which must repeat the run's overrides)", argv=tuple(TINY_TABLE1)),
    Rule(r"^gdzoo hub serve\b", "skip",
         "serves until Ctrl-C; serve_hub is tested with real timm downloads from it in tests/test_hub.py"),
    Rule(r'create_model\("gd_vgg16(_bn)?", pretrained=True\)', "skip",
         "downloads timm's vgg16.tv_in1k (528 MB); the derivation runs offline on a stand-in in "
         "tests/test_fresh_install.py, the offline error in tests/test_derived_offline.py"),
    Rule(r"--data-dir\b|\bmy_images/|\bmy_slides/", "skip",
         "needs the reader's own image folders; the commands run verbatim on folders built in "
         "tests/test_finetune_folder.py", section="Fine-tune on your own images"),
)
# Rules kept for README sections another change adds: not every one must match a command today.
OPTIONAL_RULES = {r"--data-dir\b|\bmy_images/|\bmy_slides/"}


@dataclass(frozen=True)
class Block:
    """One fenced block of README.md: its language, first line number, section heading and text."""

    lang: str
    line: int
    section: str
    text: str


def readme_blocks(text: str) -> list[Block]:
    """Every ```python and ```bash block of ``text`` with the ``##``/``###`` heading it sits under.

    Example:
        >>> [(b.lang, b.line, b.section, b.text) for b in readme_blocks("## A\\n```bash\\nls\\n```\\n")]
        [('bash', 3, 'A', 'ls\\n')]
    """
    blocks, section, fence, start, body = [], "", None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            if line.startswith("#") and not line.startswith("#!"):
                section = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence, start, body = line[3:].strip(), number + 1, []
        elif line.startswith("```"):
            if fence in ("python", "bash"):
                blocks.append(Block(fence, start, section, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    return blocks


def bash_commands(block: Block) -> list[tuple[int, str]]:
    """``(line, command)`` for each non-empty line of a bash block, its trailing ``# comment`` removed."""
    commands = []
    for offset, line in enumerate(block.text.splitlines()):
        words = shlex.split(line, comments=True)
        if words:
            commands.append((block.line + offset, shlex.join(words)))
    return commands


def rule_for(text: str, section: str) -> Rule | None:
    for rule in RULES:
        if rule.section is not None and rule.section == section:
            return rule
        if re.search(rule.pattern, text, re.M):
            return rule
    return None


@dataclass(frozen=True)
class Step:
    """A command or python block to run (``argv`` or ``code``), or a skipped one (``skip`` holds the reason)."""

    where: str
    argv: tuple[str, ...] = ()
    code: str = ""
    skip: str = ""


def plan(text: str) -> list[Step]:
    """What the README's blocks become: each command or python block with its rule applied."""
    steps = []
    for block in readme_blocks(text):
        if block.lang == "python":
            rule = rule_for(block.text, block.section)
            where = f"README.md:{block.line} (python, {block.section})"
            skipped = rule is not None and rule.action == "skip"
            steps.append(Step(where, skip=rule.reason) if skipped else Step(where, code=block.text))
            continue
        for line, command in bash_commands(block):
            where = f"README.md:{line}: {command}"
            rule = rule_for(command, block.section)
            argv = tuple(shlex.split(command))
            if rule is None:
                steps.append(Step(where, argv=argv))
            elif rule.action == "skip":
                steps.append(Step(where, skip=rule.reason))
            elif rule.action == "append":
                steps.append(Step(where, argv=argv + rule.argv))
            elif rule.action == "replace":
                steps.append(Step(where, argv=rule.argv))
            else:
                raise AssertionError(f"unknown rule action {rule.action!r}")
    return steps


DRIVER = r'''
import contextlib, io, json, os, subprocess, sys, traceback
steps = json.loads(sys.stdin.read())
from gdzoo.cli.main import main

results = []
for step in steps:
    out, err, rc = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if step["code"]:
                exec(compile(step["code"], step["where"], "exec"), {"__name__": "__main__"})
            elif step["argv"][0] == "gdzoo":
                rc = main(step["argv"][1:])
            else:
                done = subprocess.run(step["argv"], capture_output=True, text=True, timeout=300)
                rc, _ = done.returncode, (out.write(done.stdout), err.write(done.stderr))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        err.write(f"SystemExit: {e.code}\n")
    except BaseException:
        rc = 1
        err.write(traceback.format_exc())
    results.append({"where": step["where"], "rc": rc, "stdout": out.getvalue()[-1500:],
                    "stderr": err.getvalue()[-3000:]})
print("RESULTS " + json.dumps(results))
'''


def _copy_repo(target: Path) -> Path:
    """The repository's files without VCS data, environments, caches and runs (they are written in the copy)."""
    skip = {".git", ".venv", "venv", "runs", "__pycache__", "build", "dist", ".pytest_cache", ".hypothesis", "masks"}
    shutil.copytree(REPO, target, ignore=lambda _, names: [n for n in names if n in skip or n.endswith(".egg-info")])
    return target


def _write_reader_files(root: Path) -> None:
    """The one input the README leaves to the reader (``gdzoo predict slide.png ...``).

    ``slide.png``: a 256×256 crop of a real MoNuSeg H&E image when the shared data is here, else random RGB.
    """
    from PIL import Image

    images = sorted((MONUSEG / "images").glob("*.png")) if (MONUSEG / "images").is_dir() else []
    if images:
        Image.open(images[0]).convert("RGB").crop((0, 0, 256, 256)).save(root / "slide.png")
    else:
        import numpy as np

        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / "slide.png")


def test_every_rule_is_used_and_every_skip_names_why() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = readme_blocks(text)
    assert {b.lang for b in blocks} == {"python", "bash"} and len(blocks) >= 5
    used = set()
    for block in blocks:
        items = [block.text] if block.lang == "python" else [c for _, c in bash_commands(block)]
        for item in items:
            rule = rule_for(item, block.section)
            if rule is not None:
                used.add(rule.pattern)
    for rule in RULES:
        assert len(rule.reason) > 30, rule
        assert rule.pattern in used or rule.pattern in OPTIONAL_RULES, f"rule matches no README command: {rule.pattern}"


def test_readme_blocks_run_as_written(tmp_path: Path) -> None:
    root = _copy_repo(tmp_path / "gdzoo")
    _write_reader_files(root)
    steps = plan((root / "README.md").read_text(encoding="utf-8"))
    to_run = [s for s in steps if not s.skip]
    assert any(s.code for s in to_run) and any(s.argv for s in to_run)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "GDZOO_CACHE"))}
    env.update(PYTHONPATH=str(root), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               GDZOO_CACHE=str(tmp_path / "gdzoo"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # `python` is this interpreter
    payload = json.dumps([{"where": s.where, "argv": list(s.argv), "code": s.code} for s in to_run])
    done = subprocess.run([sys.executable, "-c", DRIVER], input=payload, cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "RESULTS " in done.stdout, done.stderr[-4000:]
    results = json.loads(done.stdout.split("RESULTS ", 1)[1])
    failed = [f"{r['where']}: exit {r['rc']}\n{r['stderr']}" for r in results if r["rc"] != 0]
    assert not failed, "\n\n".join(failed)
    # What the commands promise is there: the main job's run, the predict outputs, the exported folder.
    assert (root / "runs" / "fmnist_finetune" / "best.safetensors").is_file()
    assert (root / "masks" / "slide_mask.png").is_file()
    assert (root / "weights" / "gd_fmnist.mine" / "model.safetensors").is_file()
    # The published weights were not replaced by any command.
    for name in json.loads((REPO / "gdzoo" / "models" / "published_weights.json").read_text()):
        assert (root / "weights" / name / "model.safetensors").read_bytes() == \
            (REPO / "weights" / name / "model.safetensors").read_bytes(), name


def test_models_tables_agree_with_gdzoo_models() -> None:
    """README's and docs/models.md's parameter counts are what `gdzoo models` prints (the first number of a cell)."""
    from gdzoo.cli.models_table import model_rows

    rows = {r["model"]: r for r in model_rows()}

    def first_number(cell: str) -> int:
        return int(re.search(r"\d[\d,]*", cell).group(0).replace(",", ""))

    def table(text: str, header: str) -> list[list[str]]:
        start = text.index(header)
        lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]
        return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    checked = set()
    for cells in table(readme, "| model | paper | convolutions | trainable params |"):
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        counts = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]{4,}", cells[3].split("(")[0])]
        assert len(names) == len(counts), cells
        for name, count in zip(names, counts):
            assert rows[name]["trainable"] == count, (name, count, rows[name])
            checked.add(name)
    docs = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    for cells in table(docs, "| model | paper name | conv layers | trainable params | total params |"):
        name = re.search(r"`([a-z0-9_]+)`", cells[0]).group(1)
        assert (rows[name]["trainable"], rows[name]["params"]) == (first_number(cells[3]), first_number(cells[4])), name
    assert checked == set(rows), f"models missing from the README table: {set(rows) - checked}"


@pytest.mark.parametrize("command, expected", [
    ("bash run.sh", "replace"), ("bash run.sh test", "skip"), ("gdzoo models", None),
    ("gdzoo train --model gd_fmnist --pretrained --data-dir my_images/", "skip"),
])
def test_commands_are_classified_by_pattern(command: str, expected: str | None) -> None:
    rule = rule_for(command, "")
    assert (rule.action if rule else None) == expected
