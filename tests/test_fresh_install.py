"""The calls a newcomer types, on a fresh machine: gdzoo from a wheel, offline, empty caches.

- the wheel carries every published weights folder and the manifest;
- a damaged shipped file is detected and named; an explicit ``hf-hub:`` name still means the Hub;
- the README's "Use" block runs verbatim from a clone;
- ``gd_vgg16`` pretrained=True derives its weights from a ``timm/vgg16.tv_in1k`` in the HF cache (real Hub
  layout, torchvision-style keys, a real ImageNet first layer): stem output within 1 % on real images,
  every other layer bit-exact, cached once, a damaged cache re-derived;
- torch.hub's GitHub path (a repository copy where torch.hub caches GitHub repos).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gdzoo.data.fashion_mnist import find_fashion_mnist
from gdzoo.models.shipped import load_manifest

from _newcomer import Newcomer, copy_repository, last_json, wheel_files
from _paths import IMAGENET_STEM, MONUSEG, REPO, missing_data

HUB_FILES = ("config.json", "model.safetensors", "README.md")


def test_wheel_ships_every_published_folder_and_the_manifest(newcomer: Newcomer) -> None:
    files = wheel_files(newcomer.wheel)
    manifest = load_manifest()
    assert "gdzoo/models/published_weights.json" in files and "gdzoo/training/fmnist_default.yaml" in files
    shipped = {name.split("/")[2] for name in files if name.startswith("gdzoo/_weights/")}
    assert shipped == set(manifest)
    for name, entry in manifest.items():
        assert files[f"gdzoo/_weights/{name}/model.safetensors"] == entry["bytes"]
        assert all(f"gdzoo/_weights/{name}/{f}" in files for f in HUB_FILES)
    assert newcomer.wheel.stat().st_size < 5 * 2**20, f"wheel is {newcomer.wheel.stat().st_size} bytes"


def test_sdist_carries_the_weights_and_builds_a_wheel_with_them(newcomer: Newcomer, tmp_path: Path) -> None:
    """pip install from an sdist (or a git archive) gets the same shipped weights as the wheel."""
    import subprocess
    import sys
    import tarfile

    tree = copy_repository(tmp_path / "tree")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")], cwd=tree, check=True,
                   capture_output=True, timeout=300)
    sdist = next((tmp_path / "sdist").glob("gdzoo-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert all(f"weights/{name}/{f}" in names for name in load_manifest() for f in HUB_FILES)
    subprocess.run([sys.executable, "-m", "pip", "-q", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                    str(tmp_path / "dist"), str(sdist)], check=True, capture_output=True, timeout=600)
    files = wheel_files(next((tmp_path / "dist").glob("gdzoo-*.whl")))
    assert {n for n in files if n.startswith("gdzoo/_weights/")} == {n for n in wheel_files(newcomer.wheel)
                                                                     if n.startswith("gdzoo/_weights/")}


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_shipped_weights_are_named_not_loaded(newcomer: Newcomer, tmp_path: Path, damage: str) -> None:
    """A source tree whose weights/ file differs from the manifest: the error names the file and the fix."""
    tree = copy_repository(tmp_path / "tree")
    path = tree / "weights" / "gd_fmnist.fmnist" / "model.safetensors"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        _flip_middle_byte(path)
    proc = newcomer.run(["-c",
                         "import timm, gdzoo; print(gdzoo.__file__); timm.create_model('gd_fmnist', pretrained=True)"],
                        cwd=tree)
    assert proc.returncode != 0
    assert str(path) in proc.stderr and "damaged" in proc.stderr and "manifest" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.startswith(str(tree / "gdzoo"))


def test_explicit_hf_hub_name_means_the_hub(newcomer: Newcomer) -> None:
    """``hf-hub:gdzoo/gd_fmnist.fmnist`` is not served from the shipped copy: offline and uncached, it fails."""
    proc = newcomer.run(["-c",
                         "import timm, gdzoo; timm.create_model('hf-hub:gdzoo/gd_fmnist.fmnist', pretrained=True)"])
    assert proc.returncode != 0
    assert "gdzoo/gd_fmnist.fmnist" in proc.stderr


def readme_use_block() -> str:
    """The first ```python block under README.md's '## Use' heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_use_block_runs_verbatim_from_a_clone(newcomer: Newcomer) -> None:
    code = readme_use_block()
    assert "pretrained=True" in code and "torch.hub.load" in code
    proc = newcomer.run(["-c", code + "\nprint('README block ok')"], cwd=newcomer.clone)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("README block ok")


# --- gd_vgg16 from ImageNet VGG16 --------------------------------------------------------------------------------

MAKE_TIMM_VGG16 = """
import json, sys
from pathlib import Path
import numpy as np, torch, torchvision
from safetensors.torch import save_file
from gdzoo.hub import HubFolder, seed_cache
folder, stem, cache = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
state = torchvision.models.vgg16(weights=None).state_dict()   # torchvision-style keys, as timm/vgg16.tv_in1k
state["features.0.weight"] = torch.from_numpy(np.load(stem / "squeezenet1_1_conv1_weight.npy"))
state["features.0.bias"] = torch.from_numpy(np.load(stem / "squeezenet1_1_conv1_bias.npy"))
folder.mkdir(parents=True)
save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
(folder / "config.json").write_text(json.dumps({"architecture": "vgg16", "num_classes": 1000}))
(folder / "README.md").write_text("stand-in for timm/vgg16.tv_in1k (test)\\n")
seed_cache(HubFolder.open(folder), org="timm", cache_dir=cache)
(folder / "model.safetensors").unlink()
"""

LOAD_GD_VGG16 = """
import json, logging, os, sys, time
import numpy as np, torch, torch.nn.functional as F, timm, gdzoo
from PIL import Image
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from timm.models.vgg import _filter_fn
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
start = time.perf_counter()
model = timm.create_model("gd_vgg16", pretrained=True).eval()
seconds = time.perf_counter() - start
source = _filter_fn(load_file(try_to_load_from_cache("timm/vgg16.tv_in1k", "model.safetensors")))
ours = model.state_dict()
body = [k for k in source if not k.startswith("features.0.")]
exact = all(torch.equal(ours[k], source[k].reshape(ours[k].shape)) for k in body)
crops = [np.array(Image.open(p).convert("RGB"))[:224, :224] for p in sys.argv[1:]]
x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
x = (x - mean) / std
with torch.no_grad():
    ref = F.conv2d(x, source["features.0.weight"], source["features.0.bias"], padding=1)
    got = model.features[0](x)
    logits = model(x[:2])
print(json.dumps({"seconds": seconds, "file": model.pretrained_cfg.get("file"), "body_keys": len(body),
                  "body_exact": exact, "stem_error": float((got - ref).norm() / ref.norm()),
                  "finite": bool(torch.isfinite(logits).all()),
                  "params": sum(p.numel() for p in model.parameters())}))
"""


@pytest.fixture(scope="module")
def vgg_caches(newcomer: Newcomer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """HF_HOME holding only a ``timm/vgg16.tv_in1k`` in the real Hub layout, and an empty gdzoo cache."""
    if not (IMAGENET_STEM / "squeezenet1_1_conv1_weight.npy").is_file():
        pytest.skip(missing_data("real ImageNet filters", IMAGENET_STEM))
    root = tmp_path_factory.mktemp("vgg")
    env = dict(HF_HOME=str(root / "hf-home"), GDZOO_CACHE=str(root / "gdzoo-cache"))
    proc = newcomer.run(["-c", MAKE_TIMM_VGG16, str(root / "vgg16.tv_in1k"), str(IMAGENET_STEM),
                         str(root / "hf-home" / "hub")],
                        **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return env


def _real_images() -> list[str]:
    images = sorted((MONUSEG / "images").glob("*.png"))[:4]
    if not images:
        pytest.skip(missing_data("MoNuSeg images", MONUSEG / "images"))
    return [str(p) for p in images]


def test_gd_vgg16_pretrained_derives_from_timm_vgg16_once(newcomer: Newcomer, vgg_caches: dict[str, str]) -> None:
    images = _real_images()
    first = newcomer.run(["-c", LOAD_GD_VGG16, *images], **vgg_caches)
    got = last_json(first)
    derived = Path(vgg_caches["GDZOO_CACHE"]) / "derived" / "gd_vgg16.tv_in1k" / "model.safetensors"
    assert got["file"] == str(derived) and derived.is_file()
    assert "derived from timm vgg16.tv_in1k" in first.stderr and "stem output rel. error" in first.stderr
    assert got["stem_error"] < 0.01, got
    assert got["body_exact"] and got["body_keys"] == 30 and got["finite"]
    print(f"first call (derive + load): {got['seconds']:.1f} s; stem output rel. error on real images "
          f"{got['stem_error']:.2e}")

    mtime = derived.stat().st_mtime_ns
    second = newcomer.run(["-c", LOAD_GD_VGG16, *images], **vgg_caches)
    again = last_json(second)
    assert "derived from" not in second.stderr and derived.stat().st_mtime_ns == mtime
    assert again["stem_error"] == got["stem_error"] and again["body_exact"]
    print(f"second call (cached): {again['seconds']:.1f} s")

    _flip_middle_byte(derived)
    third = newcomer.run(["-c", LOAD_GD_VGG16, *images], **vgg_caches)
    healed = last_json(third)
    assert "damaged" in third.stderr and str(derived) in third.stderr and "derived from" in third.stderr
    assert healed["stem_error"] < 0.01 and healed["body_exact"]


HUB_GITHUB = """
import json, sys, urllib.error
import torch
def offline(*args, **kwargs):
    raise urllib.error.URLError("no network in this test")
torch.hub.urlopen = offline   # torch.hub asks GitHub for the default branch; offline it falls back to the cache
name, images = sys.argv[1], sys.argv[2]
model = torch.hub.load("gdzoo/gdzoo", name, pretrained=True, trust_repo=True, skip_validation=True).eval()
out = {"gdzoo": sys.modules["gdzoo"].__file__, "file": model.pretrained_cfg.get("file")}
if images != "-":
    import gzip, numpy as np
    def idx(path, offset):
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    pixels = idx(images + "/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)[:1000]
    x = torch.from_numpy(pixels.copy()).float() / 255
    y = idx(images + "/t10k-labels-idx1-ubyte.gz", 8)[:1000]
    x = (x - model.pretrained_cfg["mean"][0]) / model.pretrained_cfg["std"][0]
    with torch.no_grad():
        out["top1"] = float((model(x).argmax(1).numpy() == y).mean() * 100)
print(json.dumps(out))
"""


def test_torch_hub_github_path(newcomer: Newcomer, vgg_caches: dict[str, str], tmp_path: Path) -> None:
    """torch.hub.load('gdzoo/gdzoo', ...) from the GitHub cache folder: gdzoo and its weights from that copy."""
    torch_home = tmp_path / "torch-home"
    repo_copy = torch_home / "hub" / "gdzoo_gdzoo_main"
    shutil.copytree(newcomer.clone, repo_copy)
    try:
        fmnist = str(find_fashion_mnist())
    except FileNotFoundError:
        fmnist = "-"
    got = last_json(newcomer.run(["-c", HUB_GITHUB, "gd_fmnist", fmnist], TORCH_HOME=str(torch_home), **vgg_caches))
    assert got["gdzoo"].startswith(str(repo_copy))
    assert got["file"] == str(repo_copy / "weights" / "gd_fmnist.fmnist" / "model.safetensors")
    if fmnist != "-":
        assert got["top1"] > 90, got
    vgg = last_json(newcomer.run(["-c", HUB_GITHUB, "gd_vgg16", "-"], TORCH_HOME=str(torch_home), **vgg_caches))
    assert vgg["gdzoo"].startswith(str(repo_copy))
    assert vgg["file"].endswith("derived/gd_vgg16.tv_in1k/model.safetensors")
