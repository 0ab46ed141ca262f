"""``GDConv2d``'s no-grad kernel cache (issue 20; issue 13 item 5).

- it follows every change of the tensors it comes from: fused optimizers, ``param.data`` writes and in-place ops
  under ``no_grad`` (none of which all bump version counters), compared bit by bit;
- it is bypassed while the forward is captured (``torch.jit.trace``, ``torch.export``, ``torch.compile``,
  ``torch.func``), and never pickled or deep-copied.

Every expected value comes from a fresh computation: ``dense_weight()`` (which never uses the cache) through
``F.conv2d``.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

import gdzoo.layers.kernel_cache as kernel_cache_module
from gdzoo import GDConv2d

from _gdconv_cases import F64, PATH_IDS, PATHS, eager_reference, inputs, make

pytestmark = pytest.mark.usefixtures("single_thread")


# ============================================================================================ cache vs writes
FUSED = {
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=0.05, fused=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, fused=True),
    "sgd-fused": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
}


@pytest.mark.parametrize("mode", ["eval", "train"])  # train: no-grad teacher / EMA targets
@pytest.mark.parametrize("make_opt", FUSED.values(), ids=FUSED.keys())
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_cache_follows_fused_optimizer_steps(
    generate_calls: list[str], separated: bool, impl: str, make_opt: Callable, mode: str
) -> None:
    """Fused optimizers update in place without bumping ``_version``; the no-grad output still follows."""
    m = make(separated, impl)
    m.train(mode == "train")
    x = inputs(2, 3, 8, 8)
    opt = make_opt(m.parameters())
    for _ in range(3):
        with torch.no_grad():
            before = m(x)
            m(x)  # warm: cached
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        calls = len(generate_calls)
        with torch.no_grad():
            after, again = m(x), m(x)
        assert len(generate_calls) == calls + 1  # regenerated once, then reused
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, eager_reference(m, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again, after, rtol=0, atol=0)


WRITES = {
    "data.copy_": lambda t: t.data.copy_(t.data + 0.1 * torch.randn_like(t)),
    "data[...]=": lambda t: t.data.__setitem__((0,), t.data[0] * 0.5 + 0.2),
    "data.mul_": lambda t: t.data.mul_(1.3),
    "no_grad add_": lambda t: t.add_(0.05),  # in-place under no_grad (bumps _version; still covered)
    "data=": lambda t: setattr(t, "data", t.data.clone() - 0.1),  # new storage through .data
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
@pytest.mark.parametrize("trainable", [("sigma", "mu", "theta"), (), ("theta",)], ids=["all", "none", "theta"])
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_cache_follows_direct_writes(separated: bool, impl: str, trainable: tuple, write: Callable) -> None:
    """Writes through ``.data`` (and in-place ops) to any kernel source, parameter or buffer, are seen."""
    m = make(separated, impl, trainable=trainable).eval()
    x = inputs(2, 3, 9, 9)
    sources = ["sigma_raw", "mu_raw", "theta_raw"] + (["weight_out", "weight_in"] if separated else ["weight"])
    for name in sources:
        with torch.no_grad():
            before = m(x)
            write(getattr(m, name))
            after = m(x)
        assert not torch.allclose(before, after), name
        torch.testing.assert_close(after, eager_reference(m, x), rtol=1e-5, atol=1e-5, msg=name)


def test_cache_follows_bias_and_sigma_min() -> None:
    """The bias is applied live; a changed ``sigma_min`` (a plain attribute) regenerates."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        m.bias.data.add_(1.0)
        torch.testing.assert_close(m(x), eager_reference(m, x), rtol=1e-5, atol=1e-5)
        m.sigma_min = 0.3
        torch.testing.assert_close(m(x), eager_reference(m, x), rtol=1e-5, atol=1e-5)


def test_cache_reused_when_nothing_changed(generate_calls: list[str]) -> None:
    """The value check does not defeat the cache: unchanged sources (even rewritten with equal values) reuse it."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        m.load_state_dict(copy.deepcopy(m.state_dict()))  # new values, bit-identical
        m.weight.data.copy_(m.weight.data.clone())
        for _ in range(3):
            m(x)
    assert len(generate_calls) == 1


def test_cache_across_inference_mode_and_no_grad() -> None:
    """Kernels cached under ``inference_mode`` serve ``no_grad`` calls and are refreshed after a write."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.inference_mode():
        first = m(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), first, rtol=0, atol=0)
        m.theta_raw.data.add_(0.3)
    with torch.inference_mode():
        torch.testing.assert_close(m(x), eager_reference(m, x), rtol=1e-5, atol=1e-5)
    m(x).sum().backward()  # and training afterwards is unaffected
    assert m.theta_raw.grad is not None


def test_cache_with_nan_sources_stays_correct() -> None:
    """A NaN in a source compares equal bitwise: cached and fresh outputs agree (both NaN where expected)."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m.weight.data[0, 0, 0] = float("nan")
        first, second = m(x), m(x)
    torch.testing.assert_close(second, first, rtol=0, atol=0, equal_nan=True)


# ============================================================================================ capture
def test_jit_trace_after_warm_forward_follows_new_weights() -> None:
    """A trace made after a cached forward records kernel generation, not the cached kernels."""
    m = make(seed=0).eval()
    other = make(seed=5)
    x = inputs(1, 3, 8, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        m(x)
        m(x)
        traced = torch.jit.trace(m, x, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)  # plain ops only: serialisable
        m.load_state_dict(other.state_dict())
        want = eager_reference(m, x)
        torch.testing.assert_close(traced(x), want, rtol=1e-5, atol=1e-5)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        loaded.load_state_dict(other.state_dict(), strict=False)  # a ScriptModule also lists orders_index
        torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)


def test_torch_export_after_warm_forward_follows_new_weights() -> None:
    """``torch.export`` (not reparameterized) after a cached forward keeps the kernels a function of the weights."""
    m = make(seed=0).eval()
    other = make(seed=5)
    x = inputs(1, 3, 8, 8)
    with torch.no_grad():
        m(x)
        program = torch.export.export(m, (x,))
    exported = program.module()
    exported.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager_reference(other, x), rtol=1e-5, atol=1e-5)


def test_torch_func_vmap_under_no_grad_uses_no_cache() -> None:
    """``vmap`` over stacked weights under ``no_grad``: one output per weight set, not the cached kernels."""
    m = make().eval()
    x = inputs(1, 3, 8, 8)
    weights = torch.stack([m.weight.detach() * s for s in (0.5, 1.0, 2.0)])
    with torch.no_grad():
        m(x)
        out = torch.func.vmap(lambda w: torch.func.functional_call(m, {"weight": w}, (x,)))(weights)
    for w, y in zip(weights, out):
        ref = copy.deepcopy(m)
        ref.weight.data.copy_(w)
        torch.testing.assert_close(y, eager_reference(ref, x), rtol=1e-5, atol=1e-5)


# ============================================================================================ pickling
@pytest.mark.parametrize(("separated", "impl"), PATHS, ids=PATH_IDS)
def test_pickle_and_deepcopy_leave_the_cache_out(separated: bool, impl: str) -> None:
    m = GDConv2d(16, 16, 7, num_bases=2, separated=separated, impl=impl).eval()
    x = inputs(1, 16, 9, 9)

    def saved_size(module: nn.Module) -> int:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        return len(buffer.getvalue())

    cold = saved_size(m)
    with torch.no_grad():
        want = m(x)
    assert m._cache is not None
    assert abs(saved_size(m) - cold) <= 16
    assert len(pickle.dumps(m)) == len(pickle.dumps(copy.deepcopy(m)))
    copied = copy.deepcopy(m)
    assert copied._cache is None and m._cache is not None  # the original keeps its cache
    restored = pickle.loads(pickle.dumps(m))
    assert restored._cache is None
    with torch.no_grad():
        torch.testing.assert_close(copied(x), want, rtol=0, atol=0)
        torch.testing.assert_close(restored(x), want, rtol=0, atol=0)
        copied.weight_out.data.mul_(2.0) if separated else copied.weight.data.mul_(2.0)
        torch.testing.assert_close(copied(x), eager_reference(copied, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x), want, rtol=0, atol=0)  # the copy shares nothing with the original


def _snapshot_compare(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return kernel_cache_module._Snapshot(a).matches(b)


def _one_read_compare(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    bits = kernel_cache_module._bits
    return kernel_cache_module._same_bits_one_read(tuple(bits(t) for t in a), tuple(bits(t) for t in b))


@pytest.mark.parametrize("compare", [_snapshot_compare, _one_read_compare], ids=["host-snapshot", "one-read"])
def test_value_comparison_is_bitwise(compare: Callable) -> None:
    """Both comparison paths (host; accelerators, run here on CPU tensors) see any one-bit change, in small
    tensors (torch.equal) and large ones (bytes)."""
    large = kernel_cache_module._BYTES_MIN_NUMEL + 7
    a = (torch.randn(5, 3), torch.randn(4, 2, dtype=F64), torch.randn(7).half(), torch.randn(large),
         torch.randn(large, dtype=F64).bfloat16())
    same = tuple(t.clone() for t in a)
    assert compare(a, same)
    for i in range(len(a)):
        for position in (0, 2, a[i].numel() - 1):
            changed = [t.clone() for t in a]
            bits = changed[i].view({2: torch.int16, 4: torch.int32, 8: torch.int64}[a[i].element_size()]).view(-1)
            bits[position] ^= 1  # the lowest mantissa bit of one element
            assert not compare(a, tuple(changed)), (i, position)
    for size in (3, large):
        zeros = (torch.zeros(size),)
        assert not compare(zeros, (-zeros[0],))  # -0.0 and 0.0 differ in bits
        nan = (torch.full((size,), float("nan")),)
        assert compare(nan, (nan[0].clone(),))  # same bits: no endless regeneration
    if compare is _snapshot_compare:
        assert not compare(a[:1], (a[0].reshape(3, 5),))  # same bits, other shape
        assert not compare(a[:1], (a[0].double(),))
