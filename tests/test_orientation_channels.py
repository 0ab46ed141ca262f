"""OrientationChannels: each channel against an independently steered model (gdzoo.steer with an angle), exact
invariance to 90° rotations of the input (torch.rot90), gradients against independently steered copies, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gdzoo import OrientationChannels, steer
from test_scale_channels import REDUCE, tiny

pytestmark = pytest.mark.usefixtures("single_thread")

ANGLES = (0.0, 90.0, 180.0, 270.0)


@pytest.mark.parametrize("separated", [False, True])
def test_each_channel_equals_the_independently_steered_model(separated: bool) -> None:
    model = tiny(separated)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    angles = (0.0, 30.0, 90.0, 200.0)
    channels = OrientationChannels(model, angles=angles).eval()
    with torch.no_grad():
        expected = torch.stack([steer(model, angle=a)(x) for a in angles], dim=1)
        torch.testing.assert_close(channels.channel_logits(x), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("pool", ["max", "mean", "logsumexp"])
def test_four_right_angles_make_the_output_invariant_to_rot90(pool: str) -> None:
    model = tiny()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    net = OrientationChannels(model, angles=ANGLES, pool=pool).eval()
    with torch.no_grad():
        out = net(x)
        for k in (1, 2, 3):
            torch.testing.assert_close(net(torch.rot90(x, k, dims=(-2, -1))), out, rtol=1e-9, atol=1e-10)
        # not trivially so: the plain model is not invariant
        assert (model(torch.rot90(x, 1, dims=(-2, -1))) - model(x)).abs().max() > 1e-3


def test_gradients_are_the_sum_over_independently_steered_copies() -> None:
    model = tiny(norm="none")
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2])
    F.cross_entropy(OrientationChannels(model, angles=(0.0, 90.0, 45.0), pool="mean")(x), target).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    copies = [steer(model, angle=a) for a in (0.0, 90.0, 45.0)]
    F.cross_entropy(REDUCE["mean"](torch.stack([c(x) for c in copies], 1)), target).backward()
    for name in got:  # θ' = θ − a, everything else as is: the chain rule is the identity
        expected = sum(dict(c.named_parameters())[name].grad for c in copies)
        torch.testing.assert_close(got[name], expected, rtol=1e-7, atol=1e-10, msg=name)
    assert all(got[name].abs().sum() > 0 for name in got if "theta_raw" in name)


def test_state_dict_is_the_base_models() -> None:
    model = tiny()
    net = OrientationChannels(model)
    assert list(net.state_dict()) == list(model.state_dict())
    assert "angles=(0, 90, 180, 270), pool='max'" in repr(net)


@pytest.mark.parametrize(("angles", "message"), [
    ((), r"angles must be a non-empty sequence"),
    (90.0, r"angles must be a non-empty sequence"),
    ((0.0, float("inf")), r"every angle must be a finite number of degrees, got inf"),
    ((0.0, 360.0), r"angles must not repeat \(modulo 360\)"),
])
def test_bad_angles_name_the_value(angles, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OrientationChannels(tiny(), angles=angles)
