import pytest
import torch
import torchvision

from ssaviz.resnet import build_resnet


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_state_dict_keys_and_logits_match_torchvision(depth):
    ref = getattr(torchvision.models, f"resnet{depth}")(num_classes=7).eval()
    ours = build_resnet(depth, "none", num_classes=7).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("attention", ["se", "ssa", "salient", "cbam"])
def test_attention_models_keep_torchvision_keys_plus_attn(attention):
    ref_keys = set(torchvision.models.resnet50().state_dict())
    keys = set(build_resnet(50, attention).state_dict())
    assert ref_keys <= keys
    assert all(".attn." in k for k in keys - ref_keys)


def test_width_and_small_stem():
    m = build_resnet(18, "ssa", width=0.5, stem="small", num_classes=10).eval()
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert m.conv1.out_channels == 32 and m.fc.in_features == 256
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape == (1, 256, 4, 4)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="depth"):
        build_resnet(19)
    with pytest.raises(ValueError, match="stem"):
        build_resnet(18, stem="huge")
