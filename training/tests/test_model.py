import math

import pytest
import torch
from torch import nn

from fer_edge_training.model import (
    CLASSES,
    S_PARAMS,
    S_PARAMS_REFERENCE_LAYOUT,
    SS2D,
    VARIANTS,
    ChannelAttention,
    FerVSSBlock,
    SPPBottleneck,
    build_model,
    count_parameters,
    param_groups,
    upsample2x,
)

# channel table of MODEL.md for "s"; nano is half the width
S_CHANNELS = {
    "stem": 32,
    "dark2": 64,
    "dark3": 128,
    "dark4": 256,
    "dark5": 512,
    "n3": 256,
    "n4": 256,
    "n5": 512,
}
STAGE_STRIDES = {
    "stem": 2,
    "dark2": 4,
    "dark3": 8,
    "dark4": 16,
    "dark5": 32,
    "n3": 8,
    "n4": 16,
    "n5": 32,
}


def test_class_order():
    assert CLASSES == ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    assert VARIANTS["s"] == {"depth": 0.33, "width": 0.50}
    assert VARIANTS["nano"] == {"depth": 0.33, "width": 0.25}


@pytest.mark.parametrize("variant", ["s", "nano"])
@pytest.mark.parametrize("size", [320, 256])
def test_stage_and_output_shapes(variant, size):
    torch.manual_seed(0)
    model = build_model(variant).eval()
    scale = 1.0 if variant == "s" else 0.5
    with torch.no_grad():
        out = model.forward_stages(torch.randn(1, 3, size, size))
    for name, stride in STAGE_STRIDES.items():
        c = int(S_CHANNELS[name] * scale)
        assert tuple(out[name].shape) == (1, c, size // stride, size // stride), name
    levels = out["levels"]
    assert [tuple(t.shape) for t in levels] == [
        (1, 12, size // 8, size // 8),
        (1, 12, size // 16, size // 16),
        (1, 12, size // 32, size // 32),
    ]
    # forward() is the same computation as forward_stages()["levels"]
    with torch.no_grad():
        again = model(torch.randn(1, 3, size, size))
    assert [t.shape for t in again] == [t.shape for t in levels]
    for t in levels:
        assert torch.isfinite(t).all()


def test_s_parameter_count():
    n = count_parameters(build_model("s"))
    assert n == S_PARAMS == 9_977_988
    # MODEL.md's 10.26 M is the reference layout with the stride-16 first level
    ref = count_parameters(build_model("s", level0_downsample=True))
    assert ref == S_PARAMS_REFERENCE_LAYOUT
    assert round(ref / 1e6, 2) == 10.26


def test_level0_downsample_gives_stride16_first_level():
    model = build_model("nano", level0_downsample=True).eval()
    with torch.no_grad():
        levels = model(torch.randn(1, 3, 64, 64))
    assert [t.shape[-1] for t in levels] == [4, 4, 2]


def test_ssm_parameter_count_s():
    model = build_model("s")
    names = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")
    n = sum(p.numel() for k, p in model.named_parameters() if k.split(".")[-1] in names)
    assert n == 942_080  # MODEL.md: "about 0.94 M"


def test_param_groups_partition_and_ssm_parameters_are_trained():
    torch.manual_seed(0)
    model = build_model("nano")
    groups = param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == trainable
    decay = {id(p) for p in groups[0]["params"]}
    names = dict(model.named_parameters())
    for name, p in names.items():
        leaf = name.split(".")[-1]
        if leaf in ("A_logs", "Ds", "dt_projs_bias", "bias") or ".bn." in name:
            assert id(p) not in decay, name
        if leaf in ("x_proj_weight", "dt_projs_weight"):
            assert id(p) in decay, name
    ss2d = model.neck.vss_p3.ss2d
    assert id(ss2d.conv2d.weight) in decay
    assert id(ss2d.out_norm.weight) not in decay

    # defect 2 of the reference code: the SSM parameters must move under the optimiser
    before = {k: p.detach().clone() for k, p in ss2d.named_parameters()}
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    model.train()
    loss = sum(t.square().mean() for t in model(torch.randn(2, 3, 64, 64)))
    loss.backward()
    opt.step()
    for k in ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"):
        assert not torch.equal(before[k], getattr(ss2d, k).detach()), k


def test_upsample2x_is_nearest_neighbour():
    x = torch.randn(2, 3, 5, 7)
    want = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    assert torch.equal(upsample2x(x), want)


def test_spp_chained_pools_are_the_parallel_pools():
    torch.manual_seed(0)
    spp = SPPBottleneck(8, 6).eval()
    assert [m.kernel_size for m in spp.m] == [5, 5, 5]
    x = torch.randn(2, 8, 7, 9)
    hidden = spp.conv1(x)
    parallel = [nn.functional.max_pool2d(hidden, k, 1, k // 2) for k in (5, 9, 13)]
    want = spp.conv2(torch.cat([hidden, *parallel], dim=1))
    assert torch.equal(spp(x), want)
    with pytest.raises(ValueError, match="not odd and increasing"):
        SPPBottleneck(8, 6, (5, 8))


def test_ss2d_initialisation():
    torch.manual_seed(0)
    m = SS2D(64)
    assert (m.d_inner, m.dt_rank, m.d_state, m.k) == (128, 4, 16, 8)
    a = torch.exp(m.A_logs)
    assert torch.allclose(a, torch.arange(1, 17, dtype=torch.float32).expand(8 * 128, 16))
    assert torch.equal(m.Ds, torch.ones(8 * 128))
    bound = m.dt_rank**-0.5
    assert m.dt_projs_weight.abs().max() <= bound
    assert m.dt_projs_weight.abs().max() > 0.9 * bound
    dt = torch.nn.functional.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    # log-uniform: about half of them below the geometric midpoint 1e-2
    frac = (dt < 1e-2).float().mean().item()
    assert 0.4 < frac < 0.6
    assert m.x_proj_weight.shape == (8, 4 + 32, 128)
    assert m.dt_projs_weight.shape == (8, 128, 4)
    for p in (m.x_proj_weight, m.dt_projs_weight, m.dt_projs_bias, m.A_logs, m.Ds):
        assert isinstance(p, nn.Parameter) and p.requires_grad


def test_channel_attention_hidden_never_zero():
    ca = ChannelAttention(8)
    assert ca.mlp[0].out_features == 1
    assert ChannelAttention(64).mlp[0].out_features == 4
    x = torch.randn(2, 8, 3, 5)
    assert ca(x).shape == x.shape


def test_vss_block_residual_and_shape():
    torch.manual_seed(0)
    block = FerVSSBlock(32).eval()
    x = torch.randn(2, 32, 8, 6)
    with torch.no_grad():
        y = block(x)
        assert y.shape == x.shape
        # zero fusion conv => the block is the identity (out = fuse(...) + x)
        block.fuse.weight.zero_()
        block.fuse.bias.zero_()
        assert torch.equal(block(x), x)


def test_fast_and_ref_scan_give_same_model_output():
    from fer_edge_training.scan import set_scan_impl

    torch.manual_seed(1)
    block = FerVSSBlock(32).eval()
    x = torch.randn(1, 32, 8, 6)
    with torch.no_grad():
        fast = block(x)
        ref = set_scan_impl(block, "ref")(x)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-5)
    assert not math.isclose(fast.abs().sum().item(), x.abs().sum().item())
