"""Pretrained weights through the real timm + huggingface_hub code: seeded cache, local endpoint, errors.

Hub clients read HF_* variables at import time, so every load runs in a fresh Python process with
its own HF_HUB_CACHE / HF_ENDPOINT / HF_HUB_OFFLINE; the endpoint is gdzoo's local Hub server on
127.0.0.1 serving folders exported from freshly initialised models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from gdzoo.hub import HubFolder, export_hub_folder, seed_cache, serve_hub, verify_cached_repo, verify_folder
from gdzoo.hub.cache import cache_repo_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
ORG = "gdzoo-test"


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter with ``env`` added (HF variables must precede the import)."""
    full_env = {**os.environ, "GDZOO_HF_ORG": ORG, **env}
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        full_env.pop(var, None)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)


def load_in_subprocess(load_expr: str, env: dict[str, str]) -> dict:
    """Evaluate ``load_expr`` (a model) in a fresh process; return its output on a fixed input and its stem weight
    sum."""
    code = f"""
import json, torch, timm, gdzoo
torch.manual_seed(0)
model = {load_expr}
model.eval()
x = torch.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
with torch.no_grad():
    y = model(x)
print(json.dumps({{"out": y.flatten().tolist()}}))
"""
    proc = run_python(code, env)
    if proc.returncode != 0:
        return {"error": proc.stderr}
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HubFolder]:
    """Hub folders of freshly initialised gd_fmnist and ff_fmnist under a temporary weights/ root."""
    root = tmp_path_factory.mktemp("weights")
    folders = {}
    for name in ("gd_fmnist", "ff_fmnist"):
        torch.manual_seed(1)
        model = timm.create_model(name)
        folders[name] = export_hub_folder(
            model, "test", root, org=ORG, metrics={"test/top1": 12.5, "val/top1": 14.25}, command="gdzoo train",
            datasets=["fashion_mnist"]
        )
    return folders


def reference_output(folder: HubFolder) -> list[float]:
    """Output of a model built here and loaded directly from the folder's safetensors (no Hub code)."""
    model = timm.create_model(folder.model_name).eval()
    model.load_state_dict(load_file(folder.path / "model.safetensors"))
    x = torch.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    with torch.no_grad():
        return model(x).flatten().tolist()


def test_export_writes_timm_hub_format(exported: dict[str, HubFolder]) -> None:
    folder = exported["gd_fmnist"]
    config = json.loads((folder.path / "config.json").read_text())
    assert config["architecture"] == "gd_fmnist"
    assert config["num_classes"] == 10 and config["num_features"] > 0
    assert config["pretrained_cfg"]["hf_hub_id"] == f"{ORG}/gd_fmnist.test"
    assert config["pretrained_cfg"]["hf_hub_filename"] == "model.safetensors"
    from safetensors import safe_open

    with safe_open(folder.path / "model.safetensors", framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == "gd_fmnist" and meta["tag"] == "test"
    assert "gdzoo_version" in meta and "config_sha256" in meta
    card = (folder.path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    for needle in ("license:", "datasets:", "fashion_mnist", "metrics:", "top1", "12.50", "gdzoo train",
                   "@inproceedings"):
        assert needle in card
    assert verify_folder(folder, org=ORG) == []
    assert not list(folder.path.parent.glob(".*")), "no temporary files left beside the folder"
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in [folder.path, *folder.path.iterdir()]} == {
        p.name: oct((0o777 if p.is_dir() else 0o666) & ~umask) for p in [folder.path, *folder.path.iterdir()]}


def test_card_metrics_are_the_hubs_model_index(exported: dict[str, HubFolder]) -> None:
    """huggingface_hub's own ModelCard parser reads the card's results (what the Hub shows as evaluation results)."""
    from huggingface_hub import ModelCard

    from gdzoo.hub.card import card_metrics

    text = (exported["gd_fmnist"].path / "README.md").read_text()
    results = ModelCard(text).data.eval_results
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert got == {("test", "top1"): 12.5, ("val", "top1"): 14.25}
    assert {r.task_type for r in results} == {"image-classification"}
    assert {r.dataset_type for r in results} == {"fashion_mnist"}
    assert card_metrics(text) == {"test/top1": 12.5, "val/top1": 14.25}


def test_seeded_cache_offline_loads_through_timm_and_torch_hub(exported: dict[str, HubFolder], tmp_path: Path) -> None:
    folder = exported["gd_fmnist"]
    cache = tmp_path / "hub-cache"
    seed_cache(folder, org=ORG, cache_dir=cache)
    assert verify_cached_repo(folder.repo_id(ORG), cache) == []
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    want = reference_output(folder)
    overlay = f"pretrained_cfg_overlay=dict(hf_hub_id='{ORG}/gd_fmnist.test')"
    for expr in (
        f"timm.create_model('hf-hub:{ORG}/gd_fmnist.test', pretrained=True)",
        f"timm.create_model('gd_fmnist', pretrained=True, {overlay})",
        f"torch.hub.load({str(REPO_ROOT)!r}, 'gd_fmnist', source='local', pretrained=True, {overlay})",
    ):
        got = load_in_subprocess(expr, env)
        assert "error" not in got, f"{expr}: {got.get('error')}"
        assert got["out"] == pytest.approx(want, abs=1e-6), expr


def test_local_endpoint_download_then_offline_reuse(exported: dict[str, HubFolder], tmp_path: Path) -> None:
    folder = exported["gd_fmnist"]
    cache = tmp_path / "hub-cache"
    want = reference_output(folder)
    with serve_hub(exported.values(), org=ORG) as url:
        online = load_in_subprocess(
            f"timm.create_model('hf-hub:{ORG}/gd_fmnist.test', pretrained=True)",
            {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"},
        )
    assert "error" not in online, online.get("error")
    assert online["out"] == pytest.approx(want, abs=1e-6)
    repo_dir = cache_repo_dir(folder.repo_id(ORG), cache)
    assert (repo_dir / "refs" / "main").read_text().strip() == folder.commit_hash()
    blobs = sorted(p.name for p in (repo_dir / "blobs").iterdir())
    hashes = folder.file_hashes()
    downloaded = sorted(hashes[name] for name in ("config.json", "model.safetensors"))
    assert blobs == downloaded, "timm fetched config + weights; blobs are named by the server's sha256 ETags"
    # The server is gone: the same load must now come from the cache alone.
    offline = load_in_subprocess(
        "timm.create_model('gd_fmnist', pretrained=True, "
        f"pretrained_cfg_overlay=dict(hf_hub_id='{ORG}/gd_fmnist.test'))",
        {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    assert "error" not in offline, offline.get("error")
    assert offline["out"] == pytest.approx(want, abs=1e-6)


def test_offline_and_not_cached_names_repo_and_seed_command(tmp_path: Path) -> None:
    got = load_in_subprocess(
        "timm.create_model('gd_fmnist', pretrained=True, "
        f"pretrained_cfg_overlay=dict(hf_hub_id='{ORG}/gd_fmnist.absent'))",
        {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"},
    )
    assert f"{ORG}/gd_fmnist.absent" in got["error"]
    assert "gdzoo hub seed" in got["error"]


def test_missing_repo_and_missing_file_404(exported: dict[str, HubFolder], tmp_path: Path) -> None:
    partial = tmp_path / "gd_fmnist.partial"
    partial.mkdir()
    for name in ("config.json", "README.md"):
        (partial / name).write_bytes((exported["gd_fmnist"].path / name).read_bytes())
    with serve_hub([HubFolder(partial)], org=ORG) as url:
        env = {"HF_HUB_CACHE": str(tmp_path / "c"), "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"}
        no_repo = load_in_subprocess(
            f"timm.create_model('gd_fmnist', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id='{ORG}/nope.x'))",
            env
        )
        no_file = load_in_subprocess(
            "timm.create_model('gd_fmnist', pretrained=True, "
            f"pretrained_cfg_overlay=dict(hf_hub_id='{ORG}/gd_fmnist.partial'))",
            env,
        )
    assert f"{ORG}/nope.x" in no_repo["error"] and "does not exist" in no_repo["error"]
    assert f"{ORG}/gd_fmnist.partial" in no_file["error"] and "model.safetensors" in no_file["error"]
    assert "404" in no_file["error"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cached_weights_are_detected(exported: dict[str, HubFolder], tmp_path: Path, damage: str) -> None:
    folder = exported["gd_fmnist"]
    cache = tmp_path / "c"
    snapshot = seed_cache(folder, org=ORG, cache_dir=cache)
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF  # inside tensor data: still parses, only the hash can tell
    else:
        data = data[: len(data) // 2]
    blob.write_bytes(bytes(data))
    assert verify_cached_repo(folder.repo_id(ORG), cache), "gdzoo hub verify must flag it"
    got = load_in_subprocess(
        "timm.create_model('gd_fmnist', pretrained=True, "
        f"pretrained_cfg_overlay=dict(hf_hub_id='{ORG}/gd_fmnist.test'))",
        {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
    )
    assert "corrupted" in got["error"] and f"{ORG}/gd_fmnist.test" in got["error"]


def test_weights_of_another_architecture_list_missing_and_unexpected_keys(tmp_path: Path) -> None:
    """Separated weights (λ, β) in a non-separated model (ω): both key lists appear in the error."""
    folder = export_hub_folder(timm.create_model("gd_fmnist_sep"), "test", tmp_path, org=ORG)
    file = str(folder.path / "model.safetensors")
    with pytest.raises(RuntimeError, match=r"(?s)Missing key\(s\).*stem\.conv\.weight.*Unexpected key\(s\).*weight_in"):
        timm.create_model("gd_fmnist", pretrained=True, pretrained_cfg_overlay={"file": file})


def _grey_batch(chans: int) -> torch.Tensor:
    torch.manual_seed(3)
    grey = torch.rand(2, 1, 28, 28)
    return grey.expand(-1, chans, -1, -1).contiguous()


@pytest.mark.parametrize("name", ["gd_fmnist", "gd_fmnist_sep"])
def test_in_chans_adaptation_matches_on_grey_images(name: str, tmp_path: Path) -> None:
    """1-channel weights loaded into an RGB model give the same output on a grey image replicated to RGB."""
    torch.manual_seed(2)
    folder = export_hub_folder(timm.create_model(name), "test", tmp_path, org=ORG)
    file = str(folder.path / "model.safetensors")
    grey_model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": file}).eval()
    rgb_model = timm.create_model(name, pretrained=True, in_chans=3, pretrained_cfg_overlay={"file": file}).eval()
    with torch.no_grad():
        torch.testing.assert_close(rgb_model(_grey_batch(3)), grey_model(_grey_batch(1)), rtol=1e-4, atol=1e-5)
        # ... and back down: summing RGB weights to one channel keeps the grey-image response.
    back = export_hub_folder(rgb_model, "rgb", tmp_path / "rgb", org=ORG)
    cfg = {"file": str(back.path / "model.safetensors"), "input_size": (3, 28, 28)}
    grey_again = timm.create_model(name, pretrained=True, in_chans=1, pretrained_cfg_overlay=cfg).eval()
    with torch.no_grad():
        torch.testing.assert_close(grey_again(_grey_batch(1)), rgb_model(_grey_batch(3)), rtol=1e-4, atol=1e-5)


def test_num_classes_change_reinitialises_only_the_classifier(exported: dict[str, HubFolder]) -> None:
    folder = exported["gd_fmnist"]
    state = load_file(folder.path / "model.safetensors")
    model = timm.create_model(
        "gd_fmnist", pretrained=True, num_classes=3,
        pretrained_cfg_overlay={"file": str(folder.path / "model.safetensors")}
    )
    classifier = model.pretrained_cfg["classifier"]
    assert model.get_classifier().out_features == 3
    for key, value in model.state_dict().items():
        if not key.startswith(classifier + "."):
            torch.testing.assert_close(value, state[key], msg=key)


def test_features_only_pretrained_loads_the_backbone(exported: dict[str, HubFolder]) -> None:
    file = exported["gd_fmnist"].path / "model.safetensors"
    state = load_file(file)
    feats = timm.create_model("gd_fmnist", pretrained=True, features_only=True,
                              pretrained_cfg_overlay={"file": str(file)})
    loaded = feats.state_dict()
    shared = [k for k in loaded if k in state]
    assert shared, "feature model shares parameter names with the classifier model"
    for key in shared:
        torch.testing.assert_close(loaded[key], state[key], msg=key)


def test_list_pretrained_is_exactly_the_published_folders_and_derived_tags() -> None:
    """timm lists the shipped folders (= the manifest, hashes equal), the tags derived on first use and the tags sharing
    a shipped folder's weights (gd_fmnist_sc.fmnist), nothing else."""
    from gdzoo.hub.manifest import manifest_differences
    from gdzoo.models.gd_fmnist_sc import SHARED_WEIGHTS
    from gdzoo.models.gd_vgg import DERIVED_FROM
    from gdzoo.models.pretrained import PUBLISHED_WEIGHTS
    from gdzoo.models.registry import list_gdzoo_models

    weights = REPO_ROOT / "weights"
    folders = {p.name for p in weights.iterdir() if p.is_dir() and "." in p.name} if weights.is_dir() else set()
    listed = {t for name in list_gdzoo_models() for t in timm.list_pretrained(name)}
    assert folders == set(PUBLISHED_WEIGHTS)
    assert listed == folders | set(DERIVED_FROM) | set(SHARED_WEIGHTS)
    assert set(SHARED_WEIGHTS.values()) <= folders  # a tag sharing weights names a shipped folder
    assert manifest_differences([HubFolder.open(weights / name) for name in folders]) == []


def test_torch_load_only_with_weights_only() -> None:
    offenders = []
    for path in (REPO_ROOT / "gdzoo").rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{lineno}")
    assert offenders == []


def test_cli_seed_verify_push_dry_run(exported: dict[str, HubFolder], tmp_path: Path) -> None:
    folder = str(exported["gd_fmnist"].path)
    env = {"HF_HUB_CACHE": str(tmp_path / "cache")}
    cli = "import sys; from gdzoo.cli.main import main; sys.exit(main(sys.argv[1:]))"

    def gdzoo(*args: str) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "GDZOO_HF_ORG": ORG, **env}
        return subprocess.run([sys.executable, "-c", cli, *args], env=full_env, capture_output=True, text=True,
                              timeout=300)

    seeded = gdzoo("hub", "seed", folder)
    assert seeded.returncode == 0, seeded.stderr
    assert gdzoo("hub", "verify", folder).returncode == 0
    blob = next((cache_repo_dir(f"{ORG}/gd_fmnist.test", tmp_path / "cache") / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes() + b"x")
    broken = gdzoo("hub", "verify", folder)
    assert broken.returncode == 1 and "corrupted" in broken.stderr
    dry = gdzoo("hub", "push", folder, "--dry-run")
    assert dry.returncode == 0
    assert f"would upload to {ORG}/gd_fmnist.test" in dry.stdout
    assert all(name in dry.stdout for name in ("config.json", "model.safetensors", "README.md"))
