"""``bash benchmarks/gpu_check.sh --cpu``: the GPU check's tests and timings, run on CPU with tiny sizes
(CI keeps it working)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _paths import REPO

LAYER_HEADER = "| shape | batch | kernel | layer | path | fp32 train | fp32 inference | bf16 train | bf16 inference |"
MODEL_HEADER = ("| model | input | batch | img/s | reference | reference img/s | time ratio | compiled ratio | eager / "
                "compiled | generation | launches step / generation | launches per GD layer / torch ops / plain conv |")
MAX_LAUNCHES_PER_GD_LAYER = 12  # issue 30's target (≈ 93 with the torch generator)


def _table(report: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table that starts with ``header``, split into cells."""
    lines = report.splitlines()
    assert header in lines, f"missing table {header!r} in:\n{report}"
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _positive(cell: str, unit: str) -> float:
    assert cell.endswith(unit), f"{cell!r} is not in {unit!r}"
    value = float(cell.removesuffix(unit))
    assert math.isfinite(value) and value > 0, cell
    return value


def test_gpu_check_cpu_mode(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "benchmarks.md").read_bytes()
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu", "--out", str(tmp_path / "report.md")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    final = [line for line in proc.stderr.splitlines() if re.search(r"\d+ passed.* in [\d.]+s", line)]
    # cuda tests ran on CPU
    assert len(final) == 1 and not re.search(r"\d+ (failed|errors?)\b", final[0]), proc.stderr[-3000:]
    report = proc.stdout
    assert (tmp_path / "report.md").read_text() == report
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == docs, "--cpu must not touch the docs' GPU section"

    layers = _table(report, LAYER_HEADER)
    assert len(layers) == 3 * 3  # 3 tiny shapes × (nn.Conv2d, GD, GD-sep)
    for row in layers:
        assert len(row) == 9, row
        if row[3] == "nn.Conv2d":
            [_positive(cell, " ms") for cell in row[5:]]
        else:
            assert row[3] in ("GD", "GD-sep") and row[4] in ("dense", "basis", "factorized"), row
            [_positive(cell, "×") for cell in row[5:]]
    models = _table(report, MODEL_HEADER)
    assert [row[0].split(",")[0] for row in models] == ["gd_fmnist", "gd_unet", "gd_vgg16"]
    assert [row[4] for row in models] == ["ff_fmnist", "unet5", "vgg16"]
    assert "with the generator CUDA takes (the fused Triton kernels, interpreted)" in report
    for row in models:
        _positive(row[3], ""), _positive(row[5], ""), _positive(row[6], "×"), _positive(row[9], "%")
        assert row[7].endswith("× (aot_eager)"), row
        _positive(row[7].removesuffix(" (aot_eager)"), "×"), _positive(row[8], "×")
        step, generation = (int(v) for v in row[10].split(" / "))
        assert 0 < generation < step, row
        per_layer, torch_ops, plain = (float(v) for v in row[11].split(" / "))
        assert plain < per_layer <= MAX_LAUNCHES_PER_GD_LAYER < torch_ops, f"{row[0]}: {row[11]} launches per GD layer"


def test_gpu_check_usage_and_bad_arguments() -> None:
    usage = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode == 0 and "--cpu" in usage.stdout
    bad = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--nope"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--nope'" in bad.stderr


def test_docs_section_is_replaced_in_place_and_cpu_results_never_go_there(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_bench import BEGIN, END, main, replace_section
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# CPU\nkept\n\n# GPU\nnote, kept\n{BEGIN}\nNot run yet.\n{END}\ntail, kept\n")
    replace_section(docs, "| table |\n")
    replace_section(docs, "| new table |\n")  # a second run replaces the first one's tables, nothing else
    assert docs.read_text() == f"# CPU\nkept\n\n# GPU\nnote, kept\n{BEGIN}\n| new table |\n{END}\ntail, kept\n"
    (tmp_path / "none.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="needs exactly one"):
        replace_section(tmp_path / "none.md", "x")
    with pytest.raises(SystemExit, match="CUDA results only"):
        main(["--device", "cpu", "--small", "--docs", str(docs)])
    real = (REPO / "docs" / "benchmarks.md").read_text()
    assert real.count(BEGIN) == 1 and real.count(END) == 1 and real.index(BEGIN) < real.index(END)


def test_launch_counter_counts_kernel_launching_operators_only() -> None:
    """A convolution's forward + backward is 2 (convolution, convolution_backward); views and allocations are 0; a GD
    layer's step is ≈ 90 with the torch generator and far fewer with the fused one (issue 30's "≈ 93" today)."""
    import os

    import torch
    import torch.nn as nn

    from gdzoo import GDConv2d, generator

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_bench import LaunchCounter
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def count(fn) -> int:
        with LaunchCounter() as counter:
            fn()
        return counter.count

    conv, x = nn.Conv2d(2, 4, 3), torch.randn(1, 2, 5, 5)
    grad = torch.ones(1, 4, 3, 3)
    assert count(lambda: conv(x).backward(grad)) == 2
    assert count(lambda: (x.view(-1).unsqueeze(0).t(), torch.empty(3), x.detach().expand(2, 2, 5, 5))) == 0
    assert count(lambda: x * 2) == 1
    layer = GDConv2d(4, 8, 7, num_bases=2, order=3)
    h = torch.randn(1, 4, 9, 9)

    def step() -> None:
        layer.zero_grad(set_to_none=True)  # no gradient accumulation (one add per parameter)
        layer(h).sum().backward()

    with generator("torch"):
        torch_path = count(step)
    assert torch_path >= 80, torch_path
    if os.environ.get("TRITON_INTERPRET") == "1":
        with generator("triton"):
            fused = count(step)
        assert fused == 9, fused  # gd_basis, bmm, conv, sum; ones, conv backward, 2 bmm, gd_basis_backward
