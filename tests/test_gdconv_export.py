"""``GDConv2d`` beyond eager float32: autocast, channels_last, ``torch.compile``, float64, export.

Issue 2, "Speed and inference": works under autocast (basis in fp32), channels_last,
``torch.compile`` with no graph break, float64, and ONNX / ``torch.export`` of the reparameterised
form. Every check compares against the eager float32 layer.
"""

from __future__ import annotations

import copy
import io
import time

import pytest
import torch
import torch.nn as nn

from gdzoo import GDConv2d

PATHS = [  # (separated, impl): every execution path
    (False, "dense"),
    (False, "basis"),
    (True, "dense"),
    (True, "factorized"),
]
PATH_IDS = [f"{'sep' if s else 'nonsep'}-{i}" for s, i in PATHS]


pytestmark = pytest.mark.usefixtures("single_thread")


def make_layer(separated: bool, impl: str, seed: int = 0, **kwargs) -> GDConv2d:
    torch.manual_seed(seed)
    args = dict(num_bases=2, order=2, separated=separated, impl=impl)
    args.update(kwargs)
    layer = GDConv2d(3, 4, 5, **args)
    with torch.no_grad():
        layer.bias.uniform_(-0.5, 0.5)  # a non-zero bias, so that its handling is checked too
    return layer


def inputs(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """``|got − want| ≤ rel · max|want|`` elementwise (a scale-aware tolerance)."""
    scale = want.abs().max().item()
    err = (got.to(want.dtype) - want).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel} × {scale:.3g}"


# ---------------------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_autocast_bf16_cpu(separated: bool, impl: str) -> None:
    layer = make_layer(separated, impl)
    x = inputs(2, 3, 12, 12)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        basis, dense = layer.basis(), layer.dense_weight()
        got = layer(x)
    assert basis.dtype == torch.float32 and dense.dtype == torch.float32  # kernels generated in fp32
    torch.testing.assert_close(basis, layer.basis())  # ... and equal to the fp32 ones
    assert got.dtype == torch.bfloat16  # the convolutions themselves run in bf16
    assert_close_rel(got, want, 3e-2)  # bf16 has an 8-bit mantissa (rel. step 2^-8 ≈ 0.4%)
    got.float().square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


def test_autocast_bf16_cached_eval() -> None:
    layer = make_layer(False, "dense").eval()
    x = inputs(2, 3, 12, 12)
    with torch.no_grad():
        want = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first, second = layer(x), layer(x)  # the second call reuses the cached fp32 kernels
    assert torch.equal(first, second)
    assert_close_rel(first, want, 3e-2)


# ---------------------------------------------------------------------------------------------- channels_last
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_channels_last(separated: bool, impl: str) -> None:
    layer = make_layer(separated, impl)
    ref_layer = copy.deepcopy(layer)
    x = inputs(2, 3, 11, 13)
    want = ref_layer(x)
    want.square().mean().backward()

    layer = layer.to(memory_format=torch.channels_last)  # a no-op for GD parameters, but must not break
    x_cl = x.contiguous(memory_format=torch.channels_last)
    got = layer(x_cl)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.contiguous(), want, rtol=1e-5, atol=1e-5)  # usable downstream
    got.square().mean().backward()
    for (name, p), q in zip(layer.named_parameters(), ref_layer.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------- float64
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_float64(separated: bool, impl: str) -> None:
    layer32 = make_layer(separated, impl)
    layer64 = copy.deepcopy(layer32).double()
    x = inputs(2, 3, 9, 9, dtype=torch.float64)
    got = layer64(x)
    assert got.dtype == torch.float64
    assert layer64.basis().dtype == torch.float64 and layer64.dense_weight().dtype == torch.float64
    torch.testing.assert_close(got.float(), layer32(x.float()), rtol=1e-4, atol=1e-5)
    got.sum().backward()
    assert all(p.grad.dtype == torch.float64 for p in layer64.parameters())
    # the gradient w.r.t. the input in float64 (parameter gradients: tests/test_gdconv.py)
    tiny = GDConv2d(2, 2, 3, num_bases=1, order=1, separated=separated, impl=impl, dtype=torch.float64)
    xt = inputs(1, 2, 5, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(tiny, (xt,), eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- torch.compile
class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gd = GDConv2d(3, 4, 5, num_bases=2, order=2)  # auto → dense
        self.sep = GDConv2d(4, 4, 3, num_bases=2, order=1, separated=True, impl="factorized")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sep(torch.relu(self.gd(x)))


def test_torch_compile_fullgraph_train_matches_eager() -> None:
    """``fullgraph=True`` raises on any graph break, so compiling proves the forward has none."""
    torch._dynamo.reset()
    eager = _Small()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = inputs(2, 3, 10, 10)
    start = time.perf_counter()
    got = compiled(x)
    got.square().mean().backward()
    elapsed = time.perf_counter() - start
    want = eager(x)
    want.square().mean().backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(compiled_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert elapsed < 300, f"compilation took {elapsed:.0f} s"


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_torch_export_reparameterized(separated: bool, impl: str) -> None:
    layer = make_layer(separated, impl).eval()
    x = inputs(2, 3, 12, 12)
    with torch.no_grad():
        want = layer(x)
        layer.reparameterize()
        program = torch.export.export(layer, (x,))
        got = program.module()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert ops and all("conv" in op for op in ops), ops  # plain convolutions, nothing Gaussian left
    n_convs = sum("conv" in str(node.target) for node in program.graph.nodes if node.op == "call_function")
    assert n_convs == (3 if impl == "factorized" else 1)


def _onnx_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Export with ``torch.onnx.export`` and run the file with ONNX's reference evaluator."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # torch.onnx's exporter needs it
    from onnx.reference import ReferenceEvaluator

    buffer = io.BytesIO()
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    program.save(buffer)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    assert {node.op_type for node in proto.graph.node} <= {"Conv", "Identity", "Constant"}, [
        n.op_type for n in proto.graph.node
    ]
    (result,) = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})
    return torch.from_numpy(result)


@pytest.mark.parametrize(("separated", "impl"), [(False, "dense"), (True, "factorized")], ids=["conv", "factorized"])
def test_onnx_export_reparameterized(separated: bool, impl: str) -> None:
    layer = make_layer(separated, impl).eval()
    x = inputs(1, 3, 10, 10)
    with torch.no_grad():
        want = layer(x)
        layer.reparameterize()
    got = _onnx_outputs(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
