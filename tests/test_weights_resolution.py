"""Where ``pretrained=True`` takes weights from: shipped copies, derived-once weights, or timm's own Hub path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg

from gdzoo.models.pretrained import available_weights_file, local_weights_file
from gdzoo.models.shipped import load_manifest, shipped_weights_file

from _paths import REPO


@pytest.fixture
def offline_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty gdzoo and HF caches, Hub offline."""
    monkeypatch.setenv("GDZOO_CACHE", str(tmp_path / "gdzoo"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_every_published_tag_resolves_to_its_shipped_copy() -> None:
    for name, entry in load_manifest().items():
        cfg = get_pretrained_cfg(name).to_dict()
        path = REPO / "weights" / name / "model.safetensors"
        assert local_weights_file(cfg) == str(path)
        assert path.stat().st_size == entry["bytes"]


@pytest.mark.parametrize("override", [
    {"hf_hub_id": "someone/gd_fmnist.fmnist"},             # another organisation: its Hub repo
    {"source": "hf-hub"},                                   # an explicit hf-hub: name
    {"file": "/elsewhere/model.safetensors"},               # the caller's own file
    {"state_dict": {"w": torch.zeros(1)}},
])
def test_explicit_sources_are_left_to_timm(override: dict) -> None:
    cfg = {**get_pretrained_cfg("gd_fmnist.fmnist").to_dict(), **override}
    assert local_weights_file(cfg) is None


def test_nothing_available_is_neither_shipped_nor_derived(offline_caches: Path) -> None:
    """Asking what is on this machine never derives nor downloads."""
    assert shipped_weights_file("gd_fmnist.nonexistent") is None
    assert available_weights_file("gd_vgg16_bn") is None
    assert not (offline_caches / "gdzoo").exists()
    assert available_weights_file("gd_fmnist") == str(REPO / "weights" / "gd_fmnist.fmnist" / "model.safetensors")


def _tiny_derive(calls: list[int]):
    def derive() -> tuple[dict[str, torch.Tensor], dict]:
        calls.append(1)
        return {"w": torch.arange(6.0).view(2, 3) * len(calls)}, {"source": "test/source", "stem_output_error": 0.0}
    return derive


def test_derived_weights_are_made_once_checked_and_remade_when_damaged(
    offline_caches: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = get_pretrained_cfg("gd_vgg16.tv_in1k").to_dict()
    calls: list[int] = []
    derive = {"gd_vgg16.tv_in1k": _tiny_derive(calls)}.get

    first = Path(local_weights_file(cfg, derive))
    assert first == offline_caches / "gdzoo" / "derived" / "gd_vgg16.tv_in1k" / "model.safetensors"
    assert calls == [1] and torch.equal(load_file(first)["w"], torch.arange(6.0).view(2, 3))
    record = json.loads((first.parent / "derived.json").read_text())
    assert record["source"] == "test/source" and record["bytes"] == first.stat().st_size
    assert available_weights_file("gd_vgg16") == str(first)

    assert local_weights_file(cfg, derive) == str(first) and calls == [1]   # cached: not derived again

    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = local_weights_file(cfg, derive)
    assert calls == [1, 1] and again == str(first)
    assert "damaged" in caplog.text and str(first) in caplog.text
    assert torch.equal(load_file(first)["w"], 2 * torch.arange(6.0).view(2, 3))


def test_tags_that_cannot_be_derived_go_to_the_hub(offline_caches: Path) -> None:
    cfg = get_pretrained_cfg("gd_vgg16.tv_in1k").to_dict()
    assert local_weights_file(cfg, derive=lambda tag: None) is None
    assert local_weights_file(cfg, derive=None) is None


def test_adapted_gd_stem_gets_no_false_timm_warning(caplog: pytest.LogCaptureFixture) -> None:
    """timm warns 'weights already match ... Loading unchanged' after gdzoo adapted the GD stem: not for GD stems."""
    import timm

    with caplog.at_level(logging.INFO):
        model = timm.create_model("gd_fmnist", pretrained=True, in_chans=3)
    assert model.stem.conv.in_channels == 3
    assert "already match the model" not in caplog.text
    assert "Adapted GD stem stem.conv pretrained weights from 1 to 3 channel(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        timm.create_model("gd_fmnist", pretrained=True)
    assert "Adapted GD stem" not in caplog.text
