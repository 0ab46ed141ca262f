"""gdzoo convert end to end offline (a locally saved VGG16 at 32x32) and the Table-2 cats/dogs recipes for a few
steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import gdzoo  # noqa: F401
from gdzoo import GDConv2d
from gdzoo.cli.main import main
from gdzoo.hub.convert import convert_model
from gdzoo.layers.fit import natural_images
from gdzoo.training import load_recipe, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    source = timm.create_model("vgg16", num_classes=10)
    ckpt = out / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, ckpt)
    rc = main(["convert", "vgg16.tv_in1k", "--to", "gd_vgg16", "--tag", "test", "--checkpoint", str(ckpt),
               "--num-classes", "10", "--img-size", "32", "--num-images", "4", "--refine-steps", "20",
               "--restarts", "2", "--root", str(out / "weights"), "--report", str(out / "report.json")])
    assert rc == 0
    return source.eval(), out


def test_written_folder_loads_and_follows_the_source(converted) -> None:
    source, out = converted
    folder = out / "weights" / "gd_vgg16.test"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    model = timm.create_model("gd_vgg16", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"),
                                                          num_classes=10)).eval()
    assert isinstance(model.features[0], GDConv2d)
    report = json.loads((out / "report.json").read_text())
    x = natural_images(4, 3, 32, seed=0)  # the images the converter checked on (seed 0)
    with torch.no_grad():
        ref, got = source(x), model(x)
        assert torch.equal(model.features[2].weight, source.features[2].weight)  # body copied unchanged
    logit_error = float((got - ref).norm() / ref.norm())
    assert logit_error == pytest.approx(report["logit_error"], rel=1e-3, abs=1e-6)
    assert report["logit_error"] < 0.2 and report["fit"]["kernel_error"] < 0.5
    card = (folder / "README.md").read_text()
    assert f"| stem kernel rel. error ‖W_gd − W‖/‖W‖ | {report['fit']['kernel_error']:.4f} |" in card
    assert json.loads((folder / "config.json").read_text())["architecture"] == "gd_vgg16"


def test_mismatched_target_is_refused() -> None:
    source = timm.create_model("vgg11", num_classes=2)
    with pytest.raises(ValueError, match="differ outside the stem"):
        convert_model(source, "gd_vgg16", img_size=32, num_images=2)


def _tiny_image_folder(root: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    for cls, shade in (("cat", 60), ("dog", 190)):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = (shade + 40 * torch.randn(32, 32, 3, generator=gen)).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "train" / cls / f"{i}.png")


@pytest.mark.parametrize("recipe_name, stem_type",
                         [("gd_vgg16_cats_dogs", GDConv2d), ("vgg16_cats_dogs", torch.nn.Conv2d)])
def test_table2_recipes_train_only_the_first_layer(tmp_path: Path, recipe_name: str, stem_type: type) -> None:
    _tiny_image_folder(tmp_path / "data")
    recipe = load_recipe(REPO / "configs" / f"{recipe_name}.yaml", [
        "model.pretrained=false", "model.initial_checkpoint=null", f"data.root={tmp_path / 'data'}", "data.img_size=32",
        "data.val_size=2", "data.batch_size=3", "data.workers=0", "train.epochs=1", f"output.dir={tmp_path / 'runs'}",
        "output.plots=false", "output.progress=false", "train.device=cpu",
    ])
    assert recipe.train.freeze == "all_but_stem"
    result = train(recipe)
    assert result.history[0]["train_loss"] > 0


def test_stage_one_recipe_is_head_only() -> None:
    recipe = load_recipe(REPO / "configs" / "vgg16_cats_dogs_head.yaml")
    assert (recipe.model.name, recipe.model.pretrained, recipe.train.freeze) == ("vgg16.tv_in1k", True, "head_only")
