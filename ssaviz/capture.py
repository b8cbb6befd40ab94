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


_TARGETS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _targets(model: nn.Module, attention: str) -> dict[str, nn.Module]:
    """Name -> module to hook: every block's output and its attention's spatial/channel submodules."""
    cached = _TARGETS.get(model)
    if cached is None or cached[0] != attention:  # a model's modules never change: look them up once
        cached = _TARGETS[model] = (attention, _find_targets(model, attention))
    return dict(cached[1])


def _find_targets(model: nn.Module, attention: str) -> dict[str, nn.Module]:
    spec = attention_spec(attention)
    targets = {}
    for stage in STAGES:
        for i, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{i}"
            targets[f"{name}:out"] = block
            attn = getattr(block, "attn", None)
            if attn is not None and spec.spatial:
                targets[f"{name}:spatial"] = attn.get_submodule(spec.spatial)
            if attn is not None and spec.channel:
                targets[f"{name}:channel"] = attn.get_submodule(spec.channel)
    return targets


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
    targets = _targets(model, attention)
    if keep_graph:  # the stage outputs, kept whole and attached for the CAMs' backward
        targets.update({f"{stage}:graph": getattr(model, stage)[-1] for stage in STAGES})
    # Block outputs are reduced to their channel-mean in the hook: nothing large outlives the block.
    reduce = {name: _channel_mean for name in targets if name.endswith(":out")}
    recorder = ForwardRecorder(targets, keep_graph={f"{s}:graph" for s in STAGES} if keep_graph else set(),
                               reduce=reduce)
    grad_mode = torch.enable_grad() if keep_graph else torch.inference_mode()
    with recorder, grad_mode:
        logits = model(x)
        count_model_call()
    out = recorder.outputs

    blocks: dict[str, list[BlockMaps]] = {}
    for stage in STAGES:
        n = len(getattr(model, stage))
        names = [f"{stage}.{i}" for i in range(n)]
        # Blocks of a stage share their shape: reduce and copy them to NumPy together
        # (a few large ops instead of many small ones keeps capture close to a bare forward).
        maps = [out[f"{b}:out"][0] for b in names]  # channel-means, (N, H, W) each
        has_spatial = f"{names[0]}:spatial" in out
        if has_spatial:  # same shape as the activation maps: one copy to NumPy for both
            maps += [out[f"{b}:spatial"][:, 0] for b in names]
        stacked = _numpy(torch.stack(maps))
        acts, spatial = stacked[:n], (stacked[n:] if has_spatial else None)
        channel = (_numpy(torch.stack([out[f"{b}:channel"].flatten(1) for b in names]))
                   if f"{names[0]}:channel" in out else None)
        shape = out[f"{names[-1]}:out"][1]
        blocks[stage] = [BlockMaps(name=b, shape=shape, activation=acts[i],
                                   spatial=None if spatial is None else spatial[i],
                                   channel=None if channel is None else channel[i])
                         for i, b in enumerate(names)]
    capture = Capture(attention, logits.detach(), blocks)
    if keep_graph:
        capture.graph_logits = logits
        capture.stage_outputs = {stage: out[f"{stage}:graph"] for stage in STAGES}
    return capture
