"""Class activation maps through pytorch-grad-cam, one map per stage.

The library's CAM classes average all their target layers into one map and
run their own forward per call. ssaviz wants one map per stage and one
forward per request, so it shares the work: the capture pass keeps the stage
outputs, one backward of the target logit gives every stage's gradients, and
each method's own ``get_cam_image`` turns (activations, gradients) into the
map. Raw maps (before any normalisation) are returned; scaling is the
renderer's job.
"""

from importlib import import_module

import numpy as np
import torch
from torch import nn

from .capture import Capture, count_model_call
from .errors import SsavizError
from .resnet import STAGES

# name -> (module, class) in pytorch_grad_cam, imported on first use
CAM_METHODS = {
    "gradcam": ("grad_cam", "GradCAM"),
    "gradcam++": ("grad_cam_plusplus", "GradCAMPlusPlus"),
    "xgradcam": ("xgrad_cam", "XGradCAM"),
    "hirescam": ("hirescam", "HiResCAM"),
    "layercam": ("layer_cam", "LayerCAM"),
    "eigencam": ("eigen_cam", "EigenCAM"),
    "scorecam": ("score_cam", "ScoreCAM"),
}
CAM_TITLES = {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM",
    "hirescam": "HiRes-CAM", "layercam": "LayerCAM", "eigencam": "Eigen-CAM", "scorecam": "Score-CAM",
}


def cam_method(name: str, model: nn.Module):
    """A pytorch-grad-cam method object with no hooks of its own (no target layers).

    Kept on the model (a cycle the garbage collector frees with it): the
    objects hold no per-request state, and building one walks the whole model
    (it calls ``model.eval()``).
    """
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    key = {"gradcamplusplus": "gradcam++", "gradcampp": "gradcam++"}.get(key, key)
    if key not in CAM_METHODS:
        raise SsavizError(f"unknown CAM method {name!r}; choose one of {', '.join(CAM_METHODS)}")
    methods = model.__dict__.setdefault("_ssaviz_cam_methods", {})
    if key not in methods:
        module, cls = CAM_METHODS[key]
        method = getattr(import_module(f"pytorch_grad_cam.{module}"), cls)(model, target_layers=[])
        if key == "scorecam":
            method.batch_size = 64
        methods[key] = method
    return methods[key]


class _ClassTarget:
    """The logit of one class, as pytorch-grad-cam's ClassifierOutputTarget."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.category]


def compute_cams(model: nn.Module, x: torch.Tensor, capture: Capture, method: str = "gradcam",
                 targets: list[int] | None = None) -> dict[str, np.ndarray]:
    """Raw CAM per stage, shape (N, h, w) at the stage's resolution, for ``targets`` (default top-1).

    ``capture`` must come from ``capture_attention(..., keep_graph=True)`` on the same ``x``.
    """
    if not capture.stage_outputs:
        raise ValueError("compute_cams needs a capture made with keep_graph=True")
    cam = cam_method(method, model)
    if targets is None:
        targets = capture.logits.argmax(dim=1).tolist()
    n_classes = capture.logits.shape[1]
    for t in targets:
        if not 0 <= t < n_classes:
            raise SsavizError(f"target class {t} is out of range (the model has {n_classes} classes)")
    acts = [capture.stage_outputs[s] for s in STAGES]
    grads: list[np.ndarray | None] = [None] * len(STAGES)
    if cam.uses_gradients:
        # One backward serves all four stages.
        index = torch.as_tensor(targets, device=capture.graph_logits.device)
        score = capture.graph_logits.gather(1, index[:, None]).sum()
        grads = [g.detach().float().cpu().numpy() for g in torch.autograd.grad(score, acts)]
    target_objs = [_ClassTarget(t) for t in targets]
    if method.lower() == "scorecam":
        # Score-CAM scores masked copies of the input: one forward per channel batch.
        count_model_call(sum(int(np.ceil(a.shape[1] / cam.batch_size)) for a in acts) * len(targets))
    maps = {}
    with torch.no_grad():
        for stage, act, grad in zip(STAGES, acts, grads):
            act_np = act.detach().float().cpu().numpy()
            raw = cam.get_cam_image(x, None, target_objs, act_np, grad, eigen_smooth=False)
            maps[stage] = np.maximum(np.asarray(raw, dtype=np.float32), 0)
    return maps
