"""Every published ``weights/<model>.<tag>/`` folder, loaded as a newcomer would (gdzoo installed from a wheel,
``timm.create_model(name, pretrained=True)`` offline with empty caches), reproduces the number its model card states.

The evaluation here is written independently of gdzoo's training code: the Fashion-MNIST idx files are parsed
with numpy and top-1 counted directly; MoNuSeg Dice is pooled over the test images' pixels with numpy from
the tiled whole-image prediction (``predict_tiled``, itself checked against a whole-image forward pass).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gdzoo.data.fashion_mnist import find_fashion_mnist
from gdzoo.hub import HubFolder
from gdzoo.hub.card import card_metrics
from gdzoo.models.pretrained import PUBLISHED_WEIGHTS

from _newcomer import last_json
from _paths import MONUSEG, REPO, missing_data

TOLERANCE = 0.05  # percentage points

FMNIST_TOP1 = """
import gzip, json, sys
import numpy as np, torch, timm, gdzoo
torch.set_num_threads(1)
name, root = sys.argv[1], sys.argv[2]
model = timm.create_model(name, pretrained=True).eval()
def idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)
images = idx(f"{root}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
labels = idx(f"{root}/t10k-labels-idx1-ubyte.gz", 8)
mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)
correct = 0
with torch.no_grad():
    for i in range(0, len(labels), 1000):
        x = (torch.from_numpy(images[i:i + 1000].copy()).float() / 255 - mean) / std
        correct += int((model(x).argmax(1).numpy() == labels[i:i + 1000]).sum())
print(json.dumps({"value": 100 * correct / len(labels), "count": int(len(labels)),
                  "file": model.pretrained_cfg["file"]}))
"""

MONUSEG_DICE = """
import csv, json, sys
import numpy as np, torch, timm, gdzoo
from PIL import Image
from gdzoo.training.tiling import predict_tiled
torch.set_num_threads(1)
name, root = sys.argv[1], sys.argv[2]
model = timm.create_model(name, pretrained=True).eval()
mean = torch.tensor(model.pretrained_cfg["mean"]).view(-1, 1, 1)
std = torch.tensor(model.pretrained_cfg["std"]).view(-1, 1, 1)
with open(f"{root}/index.csv") as f:
    test_ids = [row["id"] for row in csv.DictReader(f) if row["split_suggestion"] == "test"]
tp = fp = fn = 0
for image_id in test_ids:
    rgb = np.array(Image.open(f"{root}/images/{image_id}.png").convert("RGB"))
    truth = np.array(Image.open(f"{root}/masks/{image_id}.png")) > 127
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - mean) / std
    pred = predict_tiled(model, x, tile=128, overlap=32, batch_size=16).argmax(0).numpy() > 0
    tp += int((pred & truth).sum()); fp += int((pred & ~truth).sum()); fn += int((~pred & truth).sum())
print(json.dumps({"value": 100 * 2 * tp / (2 * tp + fp + fn), "count": len(test_ids),
                  "file": model.pretrained_cfg["file"]}))
"""

# tag -> (the card metric that is recomputed, evaluation program, its data folder). MoNuSeg weights trained on all
# 30 images (the zoo recipe) state their Dice on index.csv's 8 suggested-test images as `check/full_dice` (images
# they were trained on: a check of the file); their generalisation is the cross-validated `cv/*` numbers.
EVALUATIONS = {
    "fmnist": ("test/top1", FMNIST_TOP1, lambda: find_fashion_mnist()),
    "fmnist_table1": ("test/top1", FMNIST_TOP1, lambda: find_fashion_mnist()),  # the paper protocol's runs
    "fmnist_channels": ("test/top1", FMNIST_TOP1, lambda: find_fashion_mnist()),  # gd_fmnist_sc, trained in channels
    "monuseg": ("check/full_dice", MONUSEG_DICE, lambda: MONUSEG if (MONUSEG / "index.csv").is_file() else None),
}


def test_the_paper_reproductions_weights_are_published() -> None:
    """Fashion-MNIST weights (trained on all 60000 images; the paper protocol's too) and Table 3's,
    promised to users."""
    fmnist = ("gd_fmnist", "gd_fmnist_few", "gd_fmnist_sep", "ff_fmnist", "rfnn_fmnist")
    required = {f"{m}.{tag}" for m in fmnist for tag in ("fmnist", "fmnist_table1")}
    required |= {"gd_unet.monuseg", "unet5.monuseg", "gd_unet_k7b2.monuseg"}
    assert required <= set(PUBLISHED_WEIGHTS)
    assert all((REPO / "weights" / name / "model.safetensors").is_file() for name in required)


def test_every_published_tag_has_an_evaluation() -> None:
    assert {name.split(".", 1)[1] for name in PUBLISHED_WEIGHTS} <= set(EVALUATIONS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_WEIGHTS))
def test_published_weights_reproduce_their_card(name: str, newcomer) -> None:
    """From the wheel, offline, empty caches: the shipped copy loads and reproduces the card's number."""
    folder = HubFolder.open(REPO / "weights" / name)
    metric, program, data = EVALUATIONS[folder.tag]
    try:
        root = data()
    except FileNotFoundError:
        root = None
    if root is None:
        pytest.skip(missing_data(f"evaluation data for '{folder.tag}'", MONUSEG) if folder.tag == "monuseg"
                    else f"evaluation data for '{folder.tag}' is not installed "
                         "(set GDZOO_FMNIST_DIR for Fashion-MNIST)")
    stated = card_metrics((folder.path / "README.md").read_text())[metric]
    got = last_json(newcomer.run(["-c", program, name, str(root)]))
    assert got["file"].startswith(str(newcomer.root
                                      / "venv")) and got["file"].endswith(f"gdzoo/_weights/{name}/model.safetensors")
    assert got["value"] == pytest.approx(stated,
                                         abs=TOLERANCE), f"{name}: card says {metric} = {stated}, measured {got}"


@pytest.mark.parametrize("name", sorted(n for n in PUBLISHED_WEIGHTS if n.endswith(".monuseg")))
def test_predict_cli_with_pretrained_segments_real_nuclei(name: str, newcomer, tmp_path) -> None:
    """``gdzoo predict --model M --pretrained`` as a newcomer runs it (wheel install, offline, empty caches)."""
    if not (MONUSEG / "index.csv").is_file():
        pytest.skip(missing_data("MoNuSeg index.csv", MONUSEG / "index.csv"))
    image_id = "TCGA-21-5786-01Z-00-DX1"  # an index.csv test image
    Image.open(MONUSEG / "images" / f"{image_id}.png").crop((100, 50, 400, 470)).save(tmp_path / "crop.png")
    proc = newcomer.run(["-m", "gdzoo", "predict", "--model", name.split(".")[0], "--pretrained",
                         str(tmp_path / "crop.png"), "-o", str(tmp_path / "out")], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = np.array(Image.open(tmp_path / "out" / "crop_mask.png")) > 127
    truth = np.array(Image.open(MONUSEG / "masks" / f"{image_id}.png").crop((100, 50, 400, 470))) > 127
    assert mask.shape == truth.shape == (420, 300)
    assert Image.open(tmp_path / "out" / "crop_overlay.png").size == (300, 420)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.6, f"Dice {dice:.3f} on a real test crop"
