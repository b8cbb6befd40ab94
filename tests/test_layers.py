import pytest
import torch
from torch import nn

from ssaviz.layers import ATTENTION_TYPES, SalientAttn, SSAttn, create_attn
from ssaviz.resnet import Bottleneck, build_resnet
from tests.conftest import randomise_norms


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_ssa_matches_its_formula_by_hand():
    torch.manual_seed(0)
    ssa = randomise_norms(SSAttn(12))
    x = torch.randn(3, 12, 7, 5)
    bn = ssa.bn
    # seW = GAP(X); saW = sigmoid(BN1(mean_c(seW * X))); Y = saW * X, written out per element.
    se_w = x.sum(dim=(2, 3), keepdim=True) / (7 * 5)
    m = (se_w * x).sum(dim=1, keepdim=True) / 12
    bn_out = (m - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    sa_w = 1 / (1 + torch.exp(-bn_out))
    torch.testing.assert_close(ssa(x), sa_w * x)
    # The gate's output is the spatial map itself.
    seen = {}
    ssa.gate.register_forward_hook(lambda mod, i, o: seen.setdefault("g", o))
    ssa(x)
    torch.testing.assert_close(seen["g"], sa_w)
    assert seen["g"].shape == (3, 1, 7, 5)


def test_salient_matches_its_formula():
    torch.manual_seed(1)
    sal = randomise_norms(SalientAttn(6))
    x = torch.randn(2, 6, 4, 4)
    z = torch.einsum("nchw,c->nhw", x, sal.conv.weight.flatten())[:, None] + sal.conv.bias
    bn = sal.bn
    w = torch.sigmoid((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(sal(x), w * x)


@pytest.mark.parametrize("channels", [64, 256, 2048, 24])
def test_parameters_each_module_adds(channels):
    r = max(1, round(channels / 16))
    assert n_params(create_attn("ssa", channels)) == 2
    assert n_params(create_attn("se", channels)) == channels * r + r + r * channels + channels
    assert n_params(create_attn("salient", channels)) == channels + 1 + 2
    # CBAM: shared bias-free MLP, then a 7x7 conv over [avg, max] with a BatchNorm.
    assert n_params(create_attn("cbam", channels)) == 2 * channels * r + 2 * 7 * 7 + 2
    assert create_attn("none", channels) is None


def test_ssa_adds_exactly_two_parameters_per_block():
    for depth, blocks in ((18, 8), (34, 16), (50, 16)):
        plain = n_params(build_resnet(depth, "none", 0.25))
        ssa = n_params(build_resnet(depth, "ssa", 0.25))
        assert ssa - plain == 2 * blocks


def test_every_layer_has_the_same_constructor_and_a_gate():
    for name, spec in ATTENTION_TYPES.items():
        layer = create_attn(name, 32)
        if layer is None:
            continue
        for sub in (spec.spatial, spec.channel):
            if sub:
                assert isinstance(layer.get_submodule(sub), nn.Module)
        gates = [n for n, _ in layer.named_modules() if n.split(".")[-1] == "gate"]
        assert gates, name


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="unknown attention 'foo'"):
        create_attn("foo", 8)


def test_attention_sits_after_last_bn_before_the_add():
    torch.manual_seed(0)
    block = randomise_norms(Bottleneck(64, 16, attention="ssa"))
    seen = {}
    block.bn3.register_forward_hook(lambda m, i, o: seen.setdefault("bn3", o))

    def record(module, inputs, output):
        seen["attn_in"], seen["attn_out"] = inputs[0], output

    block.attn.register_forward_hook(record)
    x = torch.randn(2, 64, 8, 8)
    y = block(x)
    assert torch.equal(seen["attn_in"], seen["bn3"])
    torch.testing.assert_close(y, torch.relu(seen["attn_out"] + x))
