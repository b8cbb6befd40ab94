import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, LayerCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ssaviz.capture import capture_attention
from ssaviz.cams import CAM_METHODS, compute_cams
from ssaviz.errors import SsavizError
from ssaviz.hooks import hook_count
from ssaviz.resnet import STAGES
from tests.conftest import tiny_model


@pytest.mark.parametrize("method_cls,name", [(GradCAM, "gradcam"), (LayerCAM, "layercam")])
@pytest.mark.parametrize("attention", ["none", "ssa", "cbam"])
def test_per_stage_maps_equal_the_library_called_per_stage(method_cls, name, attention):
    model = tiny_model(attention)
    x = torch.randn(1, 3, 64, 96)
    cap = capture_attention(model, x, keep_graph=True)
    target = int(cap.logits.argmax())
    ours = compute_cams(model, x, cap, name, [target])
    for stage in STAGES:
        with method_cls(model=model, target_layers=[getattr(model, stage)[-1]]) as cam:
            ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
        # The library min-max scales, resizes, then min-max scales its layer average again.
        mine = scale_cam_image(scale_cam_image(ours[stage], (96, 64)))
        np.testing.assert_allclose(mine, ref, atol=2e-4)
    assert hook_count(model) == 0


def test_raw_maps_are_kept_unnormalised_and_match_manual_gradcam():
    model = tiny_model("se")
    x = torch.randn(1, 3, 64, 64)
    cap = capture_attention(model, x, keep_graph=True)
    maps = compute_cams(model, x, cap, "gradcam", [3])
    # Manual Grad-CAM on a fresh forward.
    feats = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    logits = model(x)
    h.remove()
    (g,) = torch.autograd.grad(logits[0, 3], feats["a"])
    manual = torch.relu((g.mean(dim=(2, 3), keepdim=True) * feats["a"]).sum(1))[0].detach().numpy()
    np.testing.assert_allclose(maps["layer4"][0], manual, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_gives_one_map_per_stage(method):
    model = tiny_model("ssa", width=0.0625)
    x = torch.randn(1, 3, 64, 64)
    cap = capture_attention(model, x, keep_graph=True)
    maps = compute_cams(model, x, cap, method, [2])
    for i, stage in enumerate(STAGES):
        assert maps[stage].shape == (1, 16 // 2**i, 16 // 2**i)
        assert np.all(np.isfinite(maps[stage])) and maps[stage].min() >= 0


def test_bad_method_and_target_are_refused():
    model = tiny_model("none")
    x = torch.randn(1, 3, 64, 64)
    cap = capture_attention(model, x, keep_graph=True)
    with pytest.raises(SsavizError, match="unknown CAM method"):
        compute_cams(model, x, cap, "magic")
    with pytest.raises(SsavizError, match="out of range"):
        compute_cams(model, x, cap, "gradcam", [10])
