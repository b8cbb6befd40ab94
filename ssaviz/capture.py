"""Capture what a network attends to, in one forward pass.

Per block: the spatial map of its attention (SSA ``saW``, Salient ``w``, CBAM
spatial map), its channel vector (SE excitation, CBAM channel attention, SSA
squeeze vector ``seW``) and, for every model, an activation map (channel-mean
of the block's output). Plus logits and top-k. The same pass keeps the stage
outputs attached to autograd so CAMs need no second forward.
"""

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .hooks import ForwardRecorder
from .layers import attention_spec
from .resnet import STAGES

_call_counter = {"forward": 0}


def model_calls() -> int:
    """How many network forwards ssaviz has run (re-renders must not add any)."""
    return _call_counter["forward"]


def count_model_call(n: int = 1) -> None:
    _call_counter["forward"] += n


@dataclass
class BlockMaps:
    name: str  # e.g. "layer2.1"
    shape: tuple[int, int, int]  # (C, H, W) of the block's output
    activation: np.ndarray  # (N, H, W) channel-mean of the block's output
    spatial: np.ndarray | None = None  # (N, H, W) attention map in [0, 1]
    channel: np.ndarray | None = None  # (N, C) channel weights (or SSA's squeeze vector)


@dataclass
class Capture:
    attention: str
    logits: torch.Tensor  # (N, K), detached
    blocks: dict[str, list[BlockMaps]]  # stage -> blocks in order
    stage_outputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # with graph
    graph_logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def probs(self) -> np.ndarray:
        return torch.softmax(self.logits.float(), dim=1).cpu().numpy()

    def topk(self, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        probs = torch.softmax(self.logits.float(), dim=1)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return indices.cpu().numpy(), values.cpu().numpy()

    def release_graph(self) -> None:
        self.stage_outputs = {}
        self.graph_logits = None


@dataclass
class _Plan:
    """What to hook in one model, looked up once: a model's modules never change."""
    attention: str
    targets: dict[str, nn.Module]  # block outputs and attention submodules
    graph: dict[str, nn.Module]  # stage -> its last block, kept attached for CAMs
    reduce: dict
    blocks: dict[str, list[str]]  # stage -> block names, in order
    spatial: bool
    channel: bool


_PLANS: "weakref.WeakKeyDictionary[nn.Module, _Plan]" = weakref.WeakKeyDictionary()


def _plan(model: nn.Module, attention: str) -> _Plan:
    plan = _PLANS.get(model)
    if plan is None or plan.attention != attention:
        spec = attention_spec(attention)
        targets, blocks = {}, {}
        for stage in STAGES:
            blocks[stage] = []
            for i, block in enumerate(getattr(model, stage)):
                name = f"{stage}.{i}"
                blocks[stage].append(name)
                targets[f"{name}:out"] = block
                attn = getattr(block, "attn", None)
                if attn is not None and spec.spatial:
                    targets[f"{name}:spatial"] = attn.get_submodule(spec.spatial)
                if attn is not None and spec.channel:
                    targets[f"{name}:channel"] = attn.get_submodule(spec.channel)
        has_attn = getattr(getattr(model, STAGES[0])[0], "attn", None) is not None
        plan = _PLANS[model] = _Plan(
            attention, targets, {f"{s}:graph": getattr(model, s)[-1] for s in STAGES},
            # Block outputs are reduced to their channel-mean in the hook: nothing large outlives the block.
            {name: _channel_mean for name in targets if name.endswith(":out")},
            blocks, bool(spec.spatial) and has_attn, bool(spec.channel) and has_attn)
    return plan


def _channel_mean(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    return t.mean(dim=1), tuple(t.shape[1:])


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def capture_attention(model: nn.Module, x: torch.Tensor, attention: str | None = None,
                      keep_graph: bool = False) -> Capture:
    """Run ``model`` once on ``x`` and return every block's maps and the logits.

    With ``keep_graph`` the pass records autograd, and the stage outputs and
    logits stay attached so ``compute_cams`` can take gradients without
    another forward.
    """
    attention = attention or getattr(getattr(model, "config", None), "attention", "none")
    plan = _plan(model, attention)
    if keep_graph:  # the stage outputs, kept whole and attached for the CAMs' backward
        recorder = ForwardRecorder({**plan.targets, **plan.graph}, keep_graph=set(plan.graph), reduce=plan.reduce)
    else:
        recorder = ForwardRecorder(plan.targets, reduce=plan.reduce)
    grad_mode = torch.enable_grad() if keep_graph else torch.inference_mode()
    with recorder, grad_mode:
        logits = model(x)
        count_model_call()
    out = recorder.outputs

    # Every map and vector of every block goes to NumPy in one copy; the arrays are views of it
    # (one large op instead of dozens of small ones keeps capture close to a bare forward).
    pieces, shapes = [], []
    for names in plan.blocks.values():
        for b in names:
            mean, shape = out[f"{b}:out"]
            shapes.append(shape)
            pieces.append(mean.flatten(1))
            if plan.spatial:
                pieces.append(out[f"{b}:spatial"].flatten(1))
            if plan.channel:
                pieces.append(out[f"{b}:channel"].flatten(1))
    flat = _numpy(torch.cat(pieces, dim=1))
    n_img, offset = flat.shape[0], 0
    blocks: dict[str, list[BlockMaps]] = {}

    def take(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal offset
        size = int(np.prod(shape))
        view = flat[:, offset:offset + size].reshape(n_img, *shape)
        offset += size
        return view

    shape_of = iter(shapes)
    for stage, names in plan.blocks.items():
        blocks[stage] = []
        for b in names:
            c, h, w = next(shape_of)
            activation = take((h, w))
            spatial = take((h, w)) if plan.spatial else None
            channel = take((c,)) if plan.channel else None
            blocks[stage].append(BlockMaps(b, (c, h, w), activation, spatial, channel))
    capture = Capture(attention, logits.detach(), blocks)
    if keep_graph:
        capture.graph_logits = logits
        capture.stage_outputs = {stage: out[f"{stage}:graph"] for stage in STAGES}
    return capture
