"""``gdzoo export`` / ``gdzoo.export`` (issue #35): the written ONNX, pt2 and safetensors files, run by their own
runtimes here (not through gdzoo's verification), match the eager GD model; dynamic batch and U-net sizes; the
verification fails when the artefact is wrong; bad requests are refused with clear errors; the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import gdzoo
from _export_checks import assert_matches, eager_outputs, ort_outputs, pt2_outputs
from gdzoo.deploy import api as deploy_api
from gdzoo.deploy.inputs import check_inputs
from gdzoo.deploy.twins import twin_state_dict
from gdzoo.errors import UserError

from _paths import MONUSEG, REPO

pytestmark = pytest.mark.usefixtures("single_thread")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name).eval()


def _fmnist_batch(n: int) -> torch.Tensor:
    model = _model("gd_fmnist")
    return check_inputs(model, n, (1, 28, 28)).images


def test_static_batch_onnx_matches_eager_and_takes_batch_one(tmp_path) -> None:
    model = _model("gd_fmnist")
    path = tmp_path / "gd_fmnist.onnx"
    result = gdzoo.export(model, path, num_images=4)
    assert result.passed and result.format == "onnx" and path.is_file()
    x = _fmnist_batch(4)
    want = eager_outputs(model, x)
    for i in range(4):
        assert_matches(ort_outputs(path, x[i:i + 1]), want[i:i + 1])
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # the batch is fixed to 1 without dynamic_batch
        ort_outputs(path, x)
    report = json.loads(result.report_path.read_text())
    assert report["passed"] is True and report["checks"][0]["rel_error"] <= 1e-5


def test_dynamic_batch_runs_ten_images_and_one(tmp_path) -> None:
    model = _model("gd_fmnist_sep", seed=1)
    path = tmp_path / "sep.onnx"
    assert gdzoo.export(model, path, dynamic_batch=True, num_images=3).passed
    x = _fmnist_batch(10)
    want = eager_outputs(model, x)
    assert_matches(ort_outputs(path, x), want)
    assert_matches(ort_outputs(path, x[:1]), want[:1])


def test_pt2_matches_eager(tmp_path) -> None:
    model = _model("dau_fmnist")
    path = tmp_path / "dau.pt2"
    assert gdzoo.export(model, path, dynamic_batch=True, num_images=2).passed
    x = _fmnist_batch(5)
    assert_matches(pt2_outputs(path, x), eager_outputs(model, x))
    program = torch.export.load(str(path))  # nothing Gaussian left: only aten ops of a plain network
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("convolution" in t or "conv2d" in t for t in targets), targets


@pytest.mark.parametrize(("gd_name", "twin_name", "twin_kwargs", "size"), [
    ("gd_fmnist", "ff_fmnist", {"kernel_size": 7}, (1, 28, 28)),
    ("gd_convnext_atto", "convnext_atto", {}, (3, 32, 32)),
])
def test_safetensors_twin_loads_into_the_plain_architecture(tmp_path, gd_name, twin_name, twin_kwargs, size) -> None:
    from safetensors.torch import load_file

    model = _model(gd_name)
    path = tmp_path / f"{gd_name}.safetensors"
    assert gdzoo.export(model, path, input_size=size, num_images=2).passed
    twin = timm.create_model(twin_name, **twin_kwargs).eval()
    twin.load_state_dict(load_file(path), strict=True)
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(5))
    assert_matches(eager_outputs(twin, x), eager_outputs(model, x))


def test_checkpoint_weights_are_the_ones_exported(tmp_path) -> None:
    """``--checkpoint FILE``: the exported file computes the checkpoint's model, not the published one."""
    from safetensors.torch import save_file

    trained = _model("gd_fmnist", seed=7)
    save_file(trained.state_dict(), str(tmp_path / "best.safetensors"))
    path = tmp_path / "ckpt.pt2"
    result = gdzoo.export("gd_fmnist", path, checkpoint=tmp_path / "best.safetensors", num_images=2)
    assert result.passed and result.architecture == "gd_fmnist"
    x = _fmnist_batch(3)
    got = torch.cat([pt2_outputs(path, x[i:i + 1]) for i in range(3)])
    assert_matches(got, eager_outputs(trained, x))
    published = timm.create_model("gd_fmnist.fmnist", pretrained=True).eval()
    assert not torch.allclose(got, eager_outputs(published, x))


def test_cli_exports_a_training_run(tmp_path, capsys) -> None:
    """``gdzoo export --checkpoint RUN``: the run's model (named by its recipe) with its best weights."""
    from safetensors.torch import load_file

    from gdzoo.cli.main import main
    from gdzoo.training import load_recipe, train

    recipe = load_recipe(REPO / "configs" / "tiny_fmnist.yaml", [
        "model.name=gd_fmnist", "data.train_subset=64", "data.val_size=32", "data.test_subset=32", "train.epochs=1",
        f"output.dir={tmp_path / 'runs'}", "output.progress=false",
    ])
    run_dir = train(recipe).run_dir
    out = tmp_path / "run.onnx"
    assert main(["export", "--checkpoint", str(run_dir), "-o", str(out), "--dynamic-batch", "--num-images", "3"]) == 0
    assert "verification passed" in capsys.readouterr().out
    trained = timm.create_model("gd_fmnist").eval()
    trained.load_state_dict(load_file(run_dir / "best.safetensors"))
    x = _fmnist_batch(6)
    assert_matches(ort_outputs(out, x), eager_outputs(trained, x))


def test_cli_offers_the_formats_of_the_library() -> None:
    from gdzoo.cli import export_cmd
    from gdzoo.deploy import FORMATS

    assert export_cmd.FORMATS == FORMATS  # the CLI keeps its own copy so that --help imports no torch


def test_factorised_separated_layer_has_no_twin() -> None:
    from timm.utils.model import reparameterize_model

    layer = gdzoo.GDConv2d(4, 4, 5, num_bases=2, order=1, separated=True, impl="factorized")
    net = reparameterize_model(torch.nn.Sequential(layer))
    with pytest.raises(UserError, match="factorised"):
        twin_state_dict(net, "some_twin")


def test_verification_fails_on_a_wrong_artefact(tmp_path, monkeypatch) -> None:
    """A file whose weights drifted from the GD model's (the first convolution scaled by 1.001) is caught."""
    write = deploy_api.write_artefact

    def corrupted(fmt, model, spec, path, architecture):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight.mul_(1 + 1e-3)
        write(fmt, model, spec, path, architecture)

    monkeypatch.setattr(deploy_api, "write_artefact", corrupted)
    result = gdzoo.export(_model("gd_fmnist"), tmp_path / "bad.onnx", num_images=3)
    assert not result.passed
    assert result.checks[0].rel_error > 1e-5
    assert json.loads(result.report_path.read_text())["passed"] is False


def test_a_damaged_file_is_reported(tmp_path, monkeypatch) -> None:
    """A written file that its runtime cannot load (truncated) is an error naming the file, not a pass."""
    write = deploy_api.write_artefact

    def truncated(fmt, model, spec, path, architecture):
        write(fmt, model, spec, path, architecture)
        path.write_bytes(path.read_bytes()[:200])

    monkeypatch.setattr(deploy_api, "write_artefact", truncated)
    with pytest.raises(UserError, match="bad.onnx was written but onnxruntime cannot run it"):
        gdzoo.export(_model("gd_fmnist"), tmp_path / "bad.onnx", num_images=1)


def test_tolerance_zero_fails_and_the_cli_exits_one(tmp_path, capsys) -> None:
    from gdzoo.cli.main import main

    out = tmp_path / "f.onnx"
    code = main(["export", "gd_fmnist.fmnist", "-o", str(out), "--tolerance", "0", "--num-images", "2"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "verification FAILED" in printed and "tolerance 0" in printed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"format": "tflite"}, "tflite"),
    ({"opset": 18, "format": "pt2"}, "--opset"),
    ({"input_size": (3, 0, 32)}, "--input-size"),
    ({"input_size": (1, 32, 32)}, "does not take --input-size 1 32 32"),  # the U-net takes 3 channels
])
def test_bad_requests_are_refused(tmp_path, kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        gdzoo.export(_model("gd_unet"), tmp_path / "x.onnx", **kwargs)
    assert not (tmp_path / "x.onnx").exists()  # refused before anything is written


def test_unet_size_must_be_a_multiple_and_plain_models_have_no_twin(tmp_path) -> None:
    model = _model("gd_unet")
    with pytest.raises(UserError, match=f"multiples of {model.pad_multiple}"):
        gdzoo.export(model, tmp_path / "u.onnx", input_size=(3, model.pad_multiple * 4 + 1, 32))
    with pytest.raises(UserError, match="no plain-convolution twin"):
        gdzoo.export(_model("ff_fmnist"), tmp_path / "ff.safetensors")


def test_opset_and_half(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    model = _model("gd_fmnist")
    path = tmp_path / "h.onnx"
    result = gdzoo.export(model, path, opset=18, half=True, dynamic_batch=True, num_images=4)
    assert result.passed and result.dtype == "float16", result.summary()
    proto = onnx.load(str(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    x = _fmnist_batch(4)
    got = ort_outputs(path, x.half())
    assert got.dtype == torch.float16
    assert_matches(got.float(), eager_outputs(model, x), rel=1e-2)


def test_cli_end_to_end_gd_unet_monuseg_offline(tmp_path) -> None:
    """``gdzoo export gd_unet.monuseg -o gd_unet.onnx --dynamic-batch``, offline (shipped weights): printed and saved
    verification; the file, run here by onnxruntime, gives the eager masks at two sizes (dynamic H / W)."""
    out = tmp_path / "gd_unet.onnx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = ["export", "gd_unet.monuseg", "-o", str(out), "--dynamic-batch", "--num-images", "2"]
    proc = subprocess.run([sys.executable, "-m", "gdzoo", *command], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verification passed" in proc.stdout and "using the published weights gd_unet.monuseg" in proc.stderr
    report = json.loads((tmp_path / "gd_unet.onnx.verification.json").read_text())
    assert report["passed"] and report["architecture"] == "gd_unet" and len(report["checks"]) == 2
    model = timm.create_model("gd_unet.monuseg", pretrained=True).eval()
    data = str(MONUSEG) if MONUSEG.is_dir() else None  # MoNuSeg crops where the shared data is, else noise
    for size in ((64, 64), (96, 128)):
        x = check_inputs(model, 3, (3, *size), data).images
        got, want = ort_outputs(out, x), eager_outputs(model, x)
        assert_matches(got, want)
        assert torch.equal(got.argmax(1), want.argmax(1))  # identical masks
