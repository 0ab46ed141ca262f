"""The GPU path, proven on CUDA: the layer against a float64 CPU reference, AMP, the kernel cache, compile, models,
train, DDP.

Every test here carries the ``cuda`` marker and is skipped when ``torch.cuda.is_available()`` is false.
``GDZOO_CHECK_DEVICE=cpu`` runs the same bodies on CPU (``bash benchmarks/gpu_check.sh --cpu`` does, so CI
keeps the references and the plumbing working); the parts that only mean something on a GPU (nccl, the
inductor backend, ``device='cuda'`` placement) stay CUDA-only. TF32 is switched off for the reference
comparisons (the tolerances are float32's); the AMP tests measure reduced precision on purpose.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from gdzoo import GDConv2d
from gdzoo.models import list_gdzoo_models

from _gd_reference import assert_close_norm, assert_close_scaled, reference_forward, reference_params
from _paths import REPO

DEVICE = os.environ.get("GDZOO_CHECK_DEVICE", "cuda")
ON_CPU = DEVICE == "cpu"
if DEVICE not in ("cpu", "cuda") and not DEVICE.startswith("cuda:"):
    raise ValueError(f"GDZOO_CHECK_DEVICE must be cpu, cuda or cuda:N, got {DEVICE!r}")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(),
                       reason="no CUDA device (GDZOO_CHECK_DEVICE=cpu runs these bodies on CPU)"),
]
cuda_only = pytest.mark.skipif(ON_CPU, reason="meaningful on a CUDA device only")

# (separated, impl): every execution path of GDConv2d, plus what 'auto' picks.
PATHS = [(False, "dense"), (False, "basis"), (False, "auto"), (True, "dense"), (True, "factorized"), (True, "auto")]
GEOMETRIES = {  # name: (layer kwargs, input shape)
    "5x5_same": (dict(in_channels=3, out_channels=8, kernel_size=5, num_bases=2, order=3), (2, 3, 11, 11)),
    "5x3_stride2_pad1": (dict(in_channels=4, out_channels=6, kernel_size=(5, 3), stride=2, padding=1, num_bases=3,
                              order=2), (2, 4, 12, 10)),
}
RTOL_FP32 = 2e-5  # float32 against float64, per tensor: ≈ 100 ulp of the largest value


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture(autouse=True)
def strict_fp32() -> Iterator[None]:
    """IEEE float32 in cuDNN convolutions and cuBLAS matmuls (TF32 off), restored afterwards."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    threads = torch.get_num_threads()
    if ON_CPU:
        torch.set_num_threads(1)  # tiny tensors on a shared CPU
    yield
    conv.fp32_precision, matmul.fp32_precision = saved
    torch.set_num_threads(threads)


def _seeded_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("separated, impl", PATHS)
def test_layer_forward_and_gradients_match_float64_cpu_reference(device: torch.device, geometry: str,
                                                                 separated: bool, impl: str) -> None:
    """Output and gradients of every parameter (ω or λ/β, σ, μ, θ, bias) and of the input, per execution path."""
    kwargs, shape = GEOMETRIES[geometry]
    torch.manual_seed(0)
    layer = GDConv2d(**kwargs, separated=separated, impl=impl, device=device)
    with torch.no_grad():
        layer.bias.normal_()
    x64 = _seeded_input(shape).requires_grad_(True)
    params = reference_params(layer)
    expected = reference_forward(layer, params, x64)
    grad_out = _seeded_input(tuple(expected.shape), seed=1)
    expected.backward(grad_out)

    x = x64.detach().to(device, torch.float32).requires_grad_(True)
    y = layer(x)
    y.backward(grad_out.to(device, torch.float32))
    assert y.device.type == device.type and y.dtype == torch.float32
    assert_close_scaled(y, expected, RTOL_FP32, f"{layer.select_impl()} forward")
    assert_close_scaled(x.grad, x64.grad, RTOL_FP32, "input gradient")
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.device.type == device.type, name
        assert_close_scaled(p.grad, params[name].grad, 5 * RTOL_FP32, f"grad of {name}")


# ---------------------------------------------------------------------------------------------- AMP
def _small_gd_net(device: torch.device) -> nn.Module:
    """Every path once (non-separated dense and basis, separated dense and factorized), BN and a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        GDConv2d(1, 8, 5, num_bases=2, order=2, impl="dense"), nn.BatchNorm2d(8), nn.ReLU(),
        GDConv2d(8, 8, 5, num_bases=2, order=2, impl="basis"), nn.ReLU(), nn.MaxPool2d(2),
        GDConv2d(8, 16, 3, num_bases=4, order=2, separated=True, impl="dense"), nn.ReLU(),
        GDConv2d(16, 16, 3, num_bases=4, order=2, separated=True, impl="factorized"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).to(device)


def _flat_grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten() for p in model.parameters()])


def _amp_backward(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                  amp_dtype: torch.dtype, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """Forward under autocast and backward; with a scaler, back off (as GradScaler does) until the gradients are finite.

    The batch is retried instead of skipped, so that the fp16 run stays comparable with float32's.
    """
    for _ in range(17):
        opt.zero_grad()
        with torch.autocast(x.device.type, dtype=amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, target)
        assert logits.dtype == amp_dtype, "autocast did not reach the network"
        if scaler is None:
            loss.backward()
            return loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if torch.isfinite(_flat_grads(model)).all():
            return loss
        scaler.update()  # found inf: halves the scale
    raise AssertionError(f"fp16 gradients still overflow at loss scale {scaler.get_scale()}")


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_training_steps_stay_finite_and_close_to_fp32(device: torch.device, amp_dtype: torch.dtype) -> None:
    """Three SGD steps under autocast (fp16: GradScaler from its default scale) against the same steps in float32."""
    ref, amp = _small_gd_net(device), _small_gd_net(device)
    amp.load_state_dict(ref.state_dict())
    init = {n: p.detach().clone() for n, p in ref.named_parameters()}
    opt_ref, opt_amp = (torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (ref, amp))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    gen = torch.Generator().manual_seed(0)
    tol = {torch.bfloat16: 0.05, torch.float16: 0.01}[amp_dtype]
    for step in range(3):
        x = torch.randn(8, 1, 16, 16, generator=gen).to(device)
        target = torch.randint(0, 10, (8,), generator=gen).to(device)
        loss_ref = F.cross_entropy(ref(x), target)
        opt_ref.zero_grad()
        loss_ref.backward()
        loss = _amp_backward(amp, opt_amp, x, target, amp_dtype, scaler)
        grads, grads_ref = _flat_grads(amp), _flat_grads(ref)
        assert torch.isfinite(loss) and torch.isfinite(grads).all(), f"step {step}: non-finite loss or gradients"
        assert all(p.dtype == torch.float32 for p in amp.parameters()), "master weights left float32"
        assert abs(loss.item() - loss_ref.item()) <= tol * abs(loss_ref.item()), (step, loss.item(), loss_ref.item())
        cosine = F.cosine_similarity(grads, grads_ref, dim=0).item()
        assert cosine > 1 - tol, f"step {step}: gradient cosine similarity {cosine:.4f} to float32"
        for name, p in amp.named_parameters():  # σ, μ, θ have their own scales: each must follow float32's
            if name.endswith(("sigma_raw", "mu_raw", "theta_raw")):
                p_ref = dict(ref.named_parameters())[name]
                assert_close_scaled(p.grad, p_ref.grad, 10 * tol, f"step {step}: AMP grad of {name}")
        if scaler is not None:
            scaler.step(opt_amp)
            scaler.update()
        else:
            opt_amp.step()
        opt_ref.step()
    if scaler is not None:  # this net's plain Linear head alone overflows fp16 from a scale of 8192 (CPU, measured)
        assert scaler.get_scale() >= 2.0**8, f"the loss scale fell to {scaler.get_scale()}: gradients overflow fp16"
    update = torch.cat([(p.detach() - init[n]).double().flatten() for n, p in amp.named_parameters()])
    update_ref = torch.cat([(p.detach() - init[n]).double().flatten() for n, p in ref.named_parameters()])
    cosine = F.cosine_similarity(update, update_ref, dim=0).item()
    assert cosine > 1 - tol, f"3-step update: cosine similarity {cosine:.4f} to float32"
    assert abs(update.norm() / update_ref.norm() - 1) < tol, "3-step update: norm differs from float32's"


# ---------------------------------------------------------------------------------------------- kernel cache
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "adam_foreach": lambda ps: torch.optim.Adam(ps, lr=0.05, foreach=True),
    "adam_fused": lambda ps: torch.optim.Adam(ps, lr=0.05, fused=True),
    "adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=0.05, fused=True),
}


def _four_path_layers(device: torch.device) -> list[GDConv2d]:
    torch.manual_seed(0)
    return [
        GDConv2d(2, 4, 5, num_bases=2, order=2, impl="dense", device=device),
        GDConv2d(4, 4, 5, num_bases=2, order=2, impl="basis", device=device),
        GDConv2d(4, 4, 3, num_bases=2, order=2, separated=True, impl="dense", device=device),
        GDConv2d(4, 4, 3, num_bases=2, order=2, separated=True, impl="factorized", device=device),
    ]


def _chain(layers: list[nn.Module], x: torch.Tensor, conv: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    for i in range(len(layers)):
        x = F.relu(conv(i, x))
    return x


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_cached_eval_forward_sees_the_optimizer_step(device: torch.device, optimizer: str) -> None:
    """A no_grad forward in eval mode caches kernels; after a step (still in eval mode) it must use the new weights.

    Fused Adam/AdamW update parameters without bumping their version counters (torch 2.14, CPU), so a cache keyed
    on versions alone would serve stale kernels here.
    """
    make_opt = OPTIMIZERS[optimizer]
    layers = _four_path_layers(device)
    net = nn.Sequential(*layers).eval()  # eval throughout: .train()/.eval() would drop the cache themselves
    x = _seeded_input((2, 2, 9, 9)).to(device, torch.float32)
    with torch.no_grad():
        before = _chain(layers, x, lambda i, h: layers[i](h))  # fills every layer's cache
        assert torch.equal(before, _chain(layers, x, lambda i, h: layers[i](h)))  # the cache is deterministic
    opt = make_opt(list(net.parameters()))
    _chain(layers, x, lambda i, h: layers[i](h)).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = _chain(layers, x, lambda i, h: layers[i](h))
    params = [reference_params(layer) for layer in layers]
    expected = _chain(layers, x.cpu().double(), lambda i, h: reference_forward(layers[i], params[i], h))
    assert (after - before).abs().max().item() > 1e-4, "the step did not change the output"
    assert_close_scaled(after, expected, RTOL_FP32, f"cached eval forward after a {optimizer} step")


# ---------------------------------------------------------------------------------------------- fused generation
@pytest.mark.parametrize(("order", "kernel_size"), [(0, (1, 1)), (2, (4, 6)), (3, (7, 7)), (4, (9, 9)), (2, (31, 31))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_fused_generator_matches_torch_generator(device: torch.device, order: int, kernel_size: tuple[int, int],
                                                  dtype: torch.dtype) -> None:
    """The Triton kernels (compiled on CUDA; interpreted in the CPU run) against the torch ops, values and gradients."""
    if ON_CPU and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the CPU run needs TRITON_INTERPRET=1 from Python's start (tests/conftest.py sets it)")
    from gdzoo.kernels import derivative_orders, gaussian_derivative_basis_raw, generator

    gen = torch.Generator().manual_seed(order)
    n = len(derivative_orders(order))
    geometry = [torch.empty(3, n, 2, dtype=torch.float64).uniform_(-0.5, 1.8, generator=gen),
                torch.empty(3, n, 2, dtype=torch.float64).uniform_(-1, 1, generator=gen),
                torch.empty(3, n, dtype=torch.float64).uniform_(-math.pi, math.pi, generator=gen)]
    geometry = [t.to(device, dtype).requires_grad_(True) for t in geometry]
    weights = torch.randn(3, n, *kernel_size, generator=gen, dtype=torch.float64).to(device, dtype)
    orders = torch.tensor(derivative_orders(order), device=device)
    results = {}
    for name in ("triton", "torch"):
        with generator(name):
            basis = gaussian_derivative_basis_raw(*geometry, orders, kernel_size, 0.1, order)
        results[name] = (basis, *torch.autograd.grad((basis * weights).sum(), geometry))
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, e, what in zip(results["triton"], results["torch"], ("basis", "d/d sigma_raw", "d/d mu", "d/d theta")):
        assert_close_scaled(a, e, rtol, f"{what} ({dtype})")


@cuda_only
def test_eval_forward_of_a_gd_model_never_syncs_the_host(device: torch.device) -> None:
    """No host-device sync in a GD model's inference forward (the kernel cache's value check used to sync per layer)."""
    model = timm.create_model("gd_unet").to(device).eval()
    x = _seeded_input((1, 3, 64, 64)).to(device, torch.float32)
    with torch.no_grad():
        model(x)  # warm-up: cuDNN algorithm choice and Triton compilation may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("model_name", ["gd_fmnist", "gd_fmnist_sep"])
def test_compile_fullgraph_matches_eager(device: torch.device, model_name: str) -> None:
    """``torch.compile(fullgraph=True)`` (a graph break raises): train forward/backward and cached eval agree with
    eager.

    Inductor on CUDA; the ``eager`` backend on CPU
    (the same Dynamo capture, so graph breaks still fail, without a build).
    """
    if ON_CPU and model_name != "gd_fmnist":
        pytest.skip("one model is enough for the CPU plumbing run")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model(model_name).to(device).train()
    compiled = torch.compile(model, fullgraph=True, backend="eager" if ON_CPU else "inductor")
    x = _seeded_input((4, 1, 28, 28)).to(device, torch.float32)
    out = compiled(x)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    eager = model(x)
    eager.square().mean().backward()
    assert_close_scaled(out, eager, 1e-4, "compiled train forward")
    for n, p in model.named_parameters():
        assert_close_scaled(grads[n], p.grad, 1e-3, f"compiled grad of {n}")
    model.eval()
    with torch.no_grad():
        compiled_eval = compiled(x)  # recompiles for eval mode, still without a graph break
        assert_close_scaled(compiled_eval, model(x), 1e-4, "compiled eval forward")


# ---------------------------------------------------------------------------------------------- every model
def _model_input(model: nn.Module, name: str) -> torch.Tensor:
    chans, h, w = model.pretrained_cfg["input_size"]
    size = 32 if name.startswith("gd_vgg16") else min(h, 64)  # gd_vgg16 at a small size
    return _seeded_input((2, chans, size, size))


@pytest.mark.parametrize("name", list_gdzoo_models())
def test_every_model_forward_backward_channels_last(device: torch.device, name: str) -> None:
    """Every model with channels_last weights and input on the device, against the same model in float64 on CPU.

    float32 on the device: the output. float64 on the device: the output, the input gradient and every parameter's
    gradient, tightly. Gradients are not compared in float32: through a deep net cuDNN's float32 algorithms drift
    from float64 by more than any GD-specific tolerance (on an H200, unet5 -- plain nn.Conv2d -- by 1e-3 in a
    weight gradient, gd_vgg16's input gradient by 1e-2), so float32 would test cuDNN, not gdzoo's device path.
    """
    if ON_CPU and name.startswith("gd_vgg16"):
        pytest.skip("VGG-16's 120 M-parameter head in float64 takes ~30 s on a 2-core CPU; it runs on CUDA")
    torch.manual_seed(0)
    model = timm.create_model(name).eval()  # eval: no dropout, so every run sees the same function
    ref = copy.deepcopy(model).double()
    x64 = _model_input(model, name).requires_grad_(True)
    expected = ref(x64)
    grad_out = _seeded_input(tuple(expected.shape), seed=1)
    expected.backward(grad_out)

    fp32 = model.to(device, memory_format=torch.channels_last)
    with torch.no_grad():
        out32 = fp32(x64.detach().to(device, torch.float32).contiguous(memory_format=torch.channels_last))
    assert_close_scaled(out32, expected, 1e-4, f"{name} float32 output")

    fp64 = copy.deepcopy(ref).to(device, memory_format=torch.channels_last)
    fp64.zero_grad()
    x = x64.detach().to(device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = fp64(x)
    out.backward(grad_out.to(device))
    assert_close_scaled(out, expected, 1e-9, f"{name} float64 output")
    assert_close_norm(x.grad, x64.grad, 1e-8, f"{name} input gradient")
    for (pname, p), p_ref in zip(fp64.named_parameters(), ref.parameters()):
        if not p.requires_grad:  # e.g. rfnn_fmnist's fixed σ
            assert p.grad is None, f"{name}: a frozen parameter {pname} got a gradient"
            continue
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert_close_norm(p.grad, p_ref.grad, 1e-8, f"{name}: grad of {pname}")


# ---------------------------------------------------------------------------------------------- gdzoo train
def _write_image_folder(root: Path, classes: int = 2, per_class: int = 40) -> None:
    """A tiny grayscale ``ROOT/<class>/*.png`` data set (class = bright square in a different corner)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            img[c * 14:(c + 1) * 14, c * 14:(c + 1) * 14] += 150
            Image.fromarray(img, mode="L").save(root / f"class{c}" / f"{i}.png")


def _data_overrides(tmp_path: Path) -> list[str]:
    """Fashion-MNIST when it is on this machine, else a generated image folder (so the GPU run never skips for data)."""
    from gdzoo.data import find_fashion_mnist

    try:
        find_fashion_mnist()
        return ["--set", "data.train_subset=128", "--set", "data.val_size=32", "--set", "data.test_subset=32"]
    except FileNotFoundError:
        _write_image_folder(tmp_path / "images")
        return ["--set", "data.dataset=image_folder", "--set", f"data.root={tmp_path / 'images'}",
                # 80 images: the recipe's 512 don't exist
                "--set", "data.train_subset=null", "--set", "data.val_size=16"]


def test_gdzoo_train_tiny_recipe_with_bf16_amp(device: torch.device, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``gdzoo train -c configs/tiny_fmnist.yaml --amp bf16 --channels-last`` for one short epoch of gd_fmnist
    (in-process)."""
    from gdzoo.cli.main import main

    args = ["train", "-c", str(REPO / "configs" / "tiny_fmnist.yaml"),
            "--model", "gd_fmnist", "--device", DEVICE, "--amp", "bf16", "--channels-last", "--epochs", "1",
            "--batch-size", "32", "--output", str(tmp_path / "runs"), "--name", "amp", "--no-progress",
            "--set", "output.plots=false", *_data_overrides(tmp_path)]
    assert main(args) == 0
    assert f"1 x {DEVICE}" in capsys.readouterr().out, "the run did not report training on the device"
    rows = [json.loads(line) for line in (tmp_path / "runs" / "amp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"]) and rows[0]["train_loss"] > 0
    assert math.isfinite(rows[0]["val_loss"])


# ---------------------------------------------------------------------------------------------- DDP (nccl)
DDP_SCRIPT = """
import os, sys
import torch, torch.distributed as dist
from safetensors.torch import save_file
import gdzoo.training.trainer as trainer
from gdzoo.training import load_recipe, train

backends = []
def recording_init(device_name):
    info = original_init(device_name)
    backends.append(dist.get_backend() if dist.is_initialized() else "none")
    return info
original_init, trainer.init_distributed = trainer.init_distributed, recording_init

out = sys.argv[1]
recipe = load_recipe(None, [
    "name=ddp", "model.name=gd_fmnist", "model.pretrained=false",
    "data.dataset=image_folder", f"data.root={out}/images",
    "data.val_size=16", "data.batch_size=16", "optim.lr=0.01", "train.epochs=1", "train.device=cuda",
    "train.amp=bf16", f"output.dir={out}", "output.plots=false", "output.progress=false",
])
result = train(recipe)
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
save_file({k: v.contiguous().cpu() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
print(f"rank {rank} of {world} backend {backends[0]} device {next(result.model.parameters()).device}", flush=True)

if world == 1:  # gdzoo wraps in DDP only from 2 ranks: check DDP over nccl on the one GPU directly
    # The same kernels for both backward passes: cuDNN's default weight-gradient algorithms may accumulate
    # with atomics (run-to-run noise), and TF32 would round differently per algorithm.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    dist.init_process_group("nccl", world_size=1, rank=0, device_id=torch.device("cuda:0"))
    model = result.model.cuda()
    model.zero_grad(set_to_none=True)  # training leaves its last step's gradients, which backward would add to
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    x = torch.randn(4, 1, 28, 28, device="cuda")
    ddp(x).square().mean().backward()
    ddp_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().mean().backward()
    rel = max(((a - p.grad).norm() / p.grad.norm().clamp_min(1e-12)).item()
              for a, p in zip(ddp_grads, model.parameters()))
    dist.destroy_process_group()
    print(f"single-rank nccl DDP grads: largest relative difference {rel:.3g}", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cuda_only
def test_ddp_torchrun_nccl(tmp_path: Path) -> None:
    """torchrun with one rank per GPU: nccl, identical weights on every rank (one GPU: a direct nccl DDP check)."""
    world = torch.cuda.device_count()
    _write_image_folder(tmp_path / "images")
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={world}",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from safetensors.torch import load_file

    for rank in range(world):
        backend = "nccl" if world > 1 else "none"
        assert f"rank {rank} of {world} backend {backend} device cuda:{rank}" in proc.stdout, proc.stdout
    weights = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(world)]
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])
    if world == 1:
        rel = float(proc.stdout.split("largest relative difference ")[1].split()[0])
        assert rel <= 1e-6, f"DDP over nccl changed the gradients by {rel:.3g} (relative)\n{proc.stdout}"


# ---------------------------------------------------------------------------------------------- pretrained
@pytest.mark.parametrize("name", ["gd_fmnist", "gd_fmnist_sep", "gd_unet"])
def test_pretrained_on_device_matches_cpu(device: torch.device, name: str) -> None:
    """Shipped weights created on the device (``device=``) or moved there (``.to``) give the CPU model's outputs."""
    cpu_model = timm.create_model(name, pretrained=True).eval()
    moved = timm.create_model(name, pretrained=True).to(device).eval()
    built = timm.create_model(name, pretrained=True, device=device).eval()
    for model in (moved, built):
        tensors = list(model.parameters()) + list(model.buffers())
        assert all(t.device.type == device.type for t in tensors)
        for (key, value), ref in zip(model.state_dict().items(), cpu_model.state_dict().values()):
            assert torch.equal(value.cpu(), ref), f"{name}: {key} changed on the way to {device}"
    chans, h, w = cpu_model.pretrained_cfg["input_size"]
    x = _seeded_input((2, chans, min(h, 64), min(w, 64))).float()
    with torch.no_grad():
        expected = cpu_model(x)
        for label, model in (("moved", moved), ("built", built)):
            assert_close_scaled(model(x.to(device)), expected, 1e-4, f"{name} ({label}) output")
