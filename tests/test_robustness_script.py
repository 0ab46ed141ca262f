"""benchmarks/robustness.py: a stored cell is reused only for the weights it scored, so a republished
``<model>.fmnist_table1`` file recomputes its model's rows instead of showing the old file's numbers."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch

from _paths import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import robustness as rb
from _cells import tensors_sha256
from gdzoo.data.fashion_mnist import load_fashion_mnist


def test_a_cell_of_other_weights_is_recomputed_and_a_current_one_kept(tmp_path, monkeypatch,
                                                                      single_thread: None) -> None:
    monkeypatch.setattr(rb, "CELLS", tmp_path / "cells.json")
    monkeypatch.setattr(rb, "MODELS", ("ff_fmnist",))
    cell = ("ff_fmnist", "plain", 1.0, 0)
    rb.CELLS.write_text(json.dumps({rb.key(cell): {"top1": 0.0, "weights_sha256": "0"}}))
    stored = rb.run([cell])[rb.key(cell)]

    model = timm.create_model(f"ff_fmnist.{rb.WEIGHTS_TAG}", pretrained=True).eval()  # independent reference
    images, labels = load_fashion_mnist("test")
    mean, std = model.pretrained_cfg["mean"][0], model.pretrained_cfg["std"][0]
    with torch.no_grad():
        expected = 100.0 * float((model((images / 255.0 - mean) / std).argmax(1) == labels).double().mean())
    assert stored["top1"] == pytest.approx(expected, abs=0.005) and expected > 85
    assert stored["weights_sha256"] == tensors_sha256(model)
    assert json.loads(rb.CELLS.read_text())[rb.key(cell)] == stored  # written to the file

    monkeypatch.setattr(rb, "compute_cell", lambda *a: pytest.fail("a cell of the current weights was recomputed"))
    assert rb.run([cell])[rb.key(cell)] == stored


def test_the_committed_cells_name_the_published_weights_they_scored() -> None:
    """Every committed cell carries the digest of its model's current ``fmnist_table1`` file (the doc shows them)."""
    done = json.loads(rb.CELLS.read_text())
    digests = {name: tensors_sha256(timm.create_model(f"{name}.{rb.WEIGHTS_TAG}", pretrained=True))
               for name in rb.MODELS}
    assert {rb.key(c) for c in rb.cell_list()} <= done.keys()
    assert all(cell["weights_sha256"] == digests[key.split("|")[0]] for key, cell in done.items())
