"""A real 2-process gloo DDP run on CPU (torchrun on 127.0.0.1): both ranks end with identical weights; only rank 0
prints progress."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from gdzoo.data.sampling import EpochSampler

SCRIPT = """
import os, sys
from safetensors.torch import save_file
from gdzoo.training import load_recipe, train

out = sys.argv[1]
recipe = load_recipe(None, [
    "name=ddp", "model.name=gd_fmnist", "model.pretrained=false", "data.train_subset=256", "data.val_size=0",
    "data.test_subset=64", "data.batch_size=16", "optim.lr=0.01", "train.epochs=2", "train.device=cpu",
    "augment.enabled=true", "augment.scale=[0.8, 1.0]", "train.checkpoint_every_steps=5",
    f"output.dir={out}", "output.plots=false", "output.log_every_s=0",  # a progress line per step, from rank 0 only
])
result = train(recipe)
rank = os.environ["RANK"]
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
print(f"rank {rank} of {os.environ['WORLD_SIZE']} top1 {result.metrics['top1']:.2f}", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sampler_shards_are_disjoint_and_equal_sized() -> None:
    shards = [EpochSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(4)
    indices = [list(s) for s in shards]
    assert all(len(i) == 4 for i in indices) and set(sum(indices, [])) == set(range(10))
    evals = [list(EpochSampler(10, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(10))
    resumed = EpochSampler(10, seed=1, rank=1, world_size=3)
    resumed.set_epoch(4, start_index=2)
    assert list(resumed) == indices[1][2:]


def test_two_process_gloo_ddp_ranks_agree(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 of 2" in proc.stdout and "rank 1 of 2" in proc.stdout
    steps = re.findall(r"^epoch (\d)/2  step (\d+)/8  ", proc.stdout, re.M)  # stdout is a pipe: progress lines
    assert steps == [(str(e), str(s)) for e in (1, 2) for s in range(1, 9)]  # once per step: rank 1 prints none
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    init = __import__("timm").create_model("gd_fmnist", num_classes=10)
    # it trained
    assert any(not torch.equal(v, rank0[k]) for k, v in init.state_dict().items() if v.is_floating_point())
    run = tmp_path / "ddp"
    # rank 0 wrote once per epoch
    assert (run / "last.pth").is_file() and (run / "metrics.jsonl").read_text().count("\n") == 2
    # 2 ranks x 8 steps of 16 images = 256 images per epoch
    assert __import__("json").loads((run / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 0
    # the same job again, without resume: rank 0 refuses the folder, and rank 1 stops too instead of waiting for it
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    cmd = [f"--master-port={_free_port()}" if a.startswith("--master-port=") else a for a in cmd]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode != 0 and (again.stdout
                                      + again.stderr).count("already holds a run") >= 2, again.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
