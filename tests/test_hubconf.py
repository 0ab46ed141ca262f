"""torch.hub over the repository's ``hubconf.py`` (``source='local'``): listing, loading, documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from gdzoo.models import list_gdzoo_models

REPO_DIR = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def offline_github(monkeypatch: pytest.MonkeyPatch) -> str:
    """torch.hub.list/help only take GitHub names: resolve any of them to this checkout (no network)."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: REPO_DIR)
    return "gdzoo/gdzoo"


def test_hub_list_shows_exactly_the_models(offline_github: str) -> None:
    """torch.hub.list names one entry per registered gdzoo model and nothing else (helpers are private)."""
    assert sorted(torch.hub.list(offline_github)) == sorted(list_gdzoo_models())


def test_hub_entries_documented(offline_github: str) -> None:
    """Every entry has a docstring (torch.hub.help)."""
    for name in torch.hub.list(offline_github):
        doc = torch.hub.help(offline_github, name)
        assert doc and doc.strip(), name


def test_hub_load_gd_fmnist() -> None:
    """torch.hub.load builds the same model as timm.create_model and forwards Fashion-MNIST-sized input."""
    model = torch.hub.load(REPO_DIR, "gd_fmnist", source="local")
    ref = timm.create_model("gd_fmnist")
    assert type(model) is type(ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert model.pretrained_cfg["architecture"] == "gd_fmnist"
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["gd_unet", "ff_fmnist"])
def test_hub_load_kwargs(name: str) -> None:
    """Keyword arguments reach timm.create_model (num_classes, in_chans, features_only)."""
    model = torch.hub.load(REPO_DIR, name, source="local", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 24, 24))
    assert out.shape[:2] == (1, 3)
    feats = torch.hub.load(REPO_DIR, name, source="local", features_only=True)
    assert len(feats.feature_info.channels()) == 4
