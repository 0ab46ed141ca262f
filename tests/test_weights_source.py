"""One answer to "where do the weights of ``<model>.<tag>`` come from", checked before any tensor is read, once a load.

Real timm, real huggingface_hub cache layout (seeded from an exported folder), real safetensors; hashes are
compared with ``hashlib`` and the manifest, never with the resolver's own output.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants

import gdzoo._io as gdzoo_io
import gdzoo.models.shipped as shipped
from gdzoo.hub import export_hub_folder, seed_cache
from gdzoo.models.shipped import ShippedWeightsError, load_manifest
from gdzoo.models.weights_files import WEIGHTS_FILE
from gdzoo.models.weights_source import model_and_tag, resolve
from gdzoo.training.modeling import create_model
from gdzoo.training.recipes import default_recipe

from _paths import REPO

ORG = "gdzoo-test"


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sha256 of a file computed by gdzoo (the hash function wrapped wherever it was imported), cache empty."""
    calls: list[str] = []
    original = gdzoo_io.sha256_file

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("gdzoo") and getattr(module, "sha256_file", None) is original:
            monkeypatch.setattr(module, "sha256_file", counting)
    gdzoo_io.sha256_file_once.cache_clear()
    yield calls
    gdzoo_io.sha256_file_once.cache_clear()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every safetensors file whose tensors were read (timm and gdzoo load through ``safetensors.torch.load_file``)."""
    calls: list[str] = []
    original = safetensors.torch.load_file

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "load_file", counting)
    return calls


def test_shipped_source_is_the_manifests_file() -> None:
    source = resolve("gd_fmnist")
    path = REPO / "weights" / "gd_fmnist.fmnist" / WEIGHTS_FILE
    assert (source.name, source.kind, source.path) == ("gd_fmnist.fmnist", "shipped", path)
    expected = load_manifest()["gd_fmnist.fmnist"]["sha256"]
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == expected
    with pytest.raises(ValueError, match="'gd_fmnist'"):
        model_and_tag("gd_fmnist")
    assert model_and_tag("gd_vgg16.tv_in1k") == timm.models.split_model_name_tag("gd_vgg16.tv_in1k")


def test_one_hash_per_load(hashes: list[str], loads: list[str]) -> None:
    """Today's flow hashed the shipped file once per create_model and three times per default `gdzoo train`."""
    shipped_file = str(REPO / "weights" / "gd_fmnist.fmnist" / WEIGHTS_FILE)
    timm.create_model("gd_fmnist", pretrained=True)
    assert hashes == [shipped_file] and loads == [shipped_file]

    hashes.clear()
    loads.clear()
    gdzoo_io.sha256_file_once.cache_clear()
    recipe = default_recipe()  # asks whether weights are here (fine-tune), then the model is built from them
    model, info = create_model(recipe.model, num_classes=10)
    assert recipe.name == "fmnist_finetune" and info["weights"] == f"pretrained ({shipped_file})"
    assert hashes == [shipped_file] and loads == [shipped_file]
    assert model.pretrained_cfg["file"] == shipped_file


def test_damaged_shipped_copy_is_named_before_any_tensor_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  loads: list[str]) -> None:
    root = tmp_path / "shipped"
    weights = root / "gd_fmnist.fmnist" / WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    data = bytearray((REPO / "weights" / "gd_fmnist.fmnist" / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0xFF  # inside tensor data: the file still parses, only the hash can tell
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "shipped_roots", lambda: [root])
    with pytest.raises(ShippedWeightsError, match=f"Shipped weights {weights} are damaged"):
        timm.create_model("gd_fmnist", pretrained=True)
    assert loads == []


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache seeded with a freshly initialised gd_fmnist as ``gdzoo-test/gd_fmnist.test``."""
    torch.manual_seed(4)
    folder = export_hub_folder(timm.create_model("gd_fmnist"), "test", tmp_path / "weights", org=ORG)
    cache = tmp_path / "hf"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return seed_cache(folder, org=ORG, cache_dir=cache) / WEIGHTS_FILE


HUB_OVERLAY = {"hf_hub_id": f"{ORG}/gd_fmnist.test"}


def test_hub_source_is_checked_against_its_blob_name_then_loaded(hub_cache: Path, hashes: list[str],
                                                                  loads: list[str]) -> None:
    blob = hub_cache.resolve()
    model = timm.create_model("gd_fmnist", pretrained=True, pretrained_cfg_overlay=HUB_OVERLAY)
    assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()
    assert hashes == [str(blob)] and [Path(p).resolve() for p in loads] == [blob]
    want = safetensors.torch.load_file(blob)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())


def test_corrupted_hub_file_is_named_before_any_tensor_is_read(hub_cache: Path, loads: list[str]) -> None:
    blob = hub_cache.resolve()
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=f"corrupted: sha256 of {blob}"):
        timm.create_model("gd_fmnist", pretrained=True, pretrained_cfg_overlay=HUB_OVERLAY)
    assert loads == []


def test_a_file_is_hashed_again_once_it_changes(tmp_path: Path, hashes: list[str]) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100)
    old = 1_000_000_000
    os.utime(path, ns=(old, old))
    # the ctime is now: a write within the filesystem's timestamp granularity could go unseen, so no memory yet
    assert gdzoo_io.sha256_file_once(path) == hashlib.sha256(b"a" * 100).hexdigest()
    path.write_bytes(b"b" * 100)  # same size; mtime set back: only the ctime and the content tell
    os.utime(path, ns=(old, old))
    assert gdzoo_io.sha256_file_once(path) == hashlib.sha256(b"b" * 100).hexdigest()
    assert len(hashes) == 2
