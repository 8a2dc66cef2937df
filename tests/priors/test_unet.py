"""U-Net building blocks: the fast upsampling convolution equals the reference it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mrprior.priors.unet import NearestUpConv, nearest_upsample_weight


def reference_up_conv(conv: NearestUpConv, x: torch.Tensor) -> torch.Tensor:
    """×2 nearest upsampling, then the 3×3 convolution (padding 1): the definition."""
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.conv2d(up, conv.weight, conv.bias, padding=1)


@pytest.mark.parametrize("shape", [(2, 5, 8, 8), (1, 3, 7, 12), (3, 4, 1, 5)])
def test_nearest_up_conv_equals_upsample_then_conv(shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    b, c, h, w = shape
    conv = NearestUpConv(c, 6)
    x = torch.randn(shape)
    out = conv(x)
    assert out.shape == (b, 6, 2 * h, 2 * w)
    torch.testing.assert_close(out, reference_up_conv(conv, x), rtol=1e-5, atol=1e-5)
    # the same in channels-last, as the prior runs it
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(xc), reference_up_conv(conv, x), rtol=1e-5, atol=1e-5)


def test_nearest_up_conv_gradients_match() -> None:
    """Training differentiates through the weight transform: the same gradients."""
    torch.manual_seed(1)
    conv = NearestUpConv(4, 3)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    g = torch.randn(2, 3, 12, 12)
    grads = []
    for fn in (conv, lambda t: reference_up_conv(conv, t)):
        conv.zero_grad()
        x.grad = None
        (fn(x) * g).sum().backward()
        grads.append((x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    for a, r in zip(*grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_nearest_up_conv_keeps_conv_state_dict() -> None:
    """Shipped weights (``upsamplers.N.weight`` 3×3, ``.bias``) load unchanged."""
    conv = NearestUpConv(4, 3)
    sd = conv.state_dict()
    assert set(sd) == {"weight", "bias"} and tuple(sd["weight"].shape) == (3, 4, 3, 3)
    plain = torch.nn.Conv2d(4, 3, 3, padding=1)
    conv.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(conv(x), plain(F.interpolate(x, scale_factor=2.0)))


def test_modulated_norm_one_image_equals_three_passes() -> None:
    """The FiLM scale/shift folded into the GroupNorm affine (one image) equals
    ``norm(h)·(1 + scale) + shift``; batches take that form directly."""
    from mrprior.priors.unet import modulated_norm

    torch.manual_seed(3)
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.add_(torch.randn(8))
        norm.bias.add_(torch.randn(8))
    h = torch.randn(3, 8, 9, 10).contiguous(memory_format=torch.channels_last)
    scale, shift = torch.randn(3, 8), torch.randn(3, 8)
    ref = norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    for i in range(3):
        one = modulated_norm(norm, h[i : i + 1], scale[i : i + 1], shift[i : i + 1])
        torch.testing.assert_close(one, ref[i : i + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(modulated_norm(norm, h, scale, shift), ref)
    # bf16 (autocast's dtypes): within bf16 rounding of the float32 result, one rounding
    hb, sb, tb = h[:1].bfloat16(), scale[:1].bfloat16(), shift[:1].bfloat16()
    one = modulated_norm(norm, hb, sb, tb)
    assert one.dtype == torch.bfloat16
    exact = norm(hb.float()) * (1 + sb.float()[:, :, None, None]) + tb.float()[:, :, None, None]
    torch.testing.assert_close(one.float(), exact, rtol=1e-2, atol=1e-2)


def test_inference_copy_keeps_original_and_kernels() -> None:
    """The copy's upsamplers hold the transposed kernel computed in float32, then cast; the
    original network (training) keeps float32 weights and derives its kernels per call."""
    from mrprior.priors.unet import EDMDenoiser, UNetConfig, inference_copy

    torch.manual_seed(4)
    model = EDMDenoiser(UNetConfig(channels=[4, 8], blocks_per_level=1, emb_dim=8))
    copy = inference_copy(model, torch.bfloat16)
    for up, ref in zip(copy.net.upsamplers, model.net.upsamplers, strict=True):
        assert ref.kernel is None and ref.weight.dtype == torch.float32
        assert up.kernel is not None and up.kernel.dtype == torch.bfloat16
        assert torch.equal(up.kernel, nearest_upsample_weight(ref.weight).bfloat16())
    assert set(copy.state_dict()) == set(model.state_dict())
