"""Capture what a network attends to, in one forward pass.

Per block: the spatial map of its attention (SSA ``saW``, Salient ``w``, CBAM
spatial map), its channel vector (SE excitation, CBAM channel attention, SSA
squeeze vector ``seW``) and, for every model, an activation map (channel-mean
of the block's output). Plus logits and top-k. The same pass keeps the stage
outputs attached to autograd so CAMs need no second forward.
"""

import weakref
from dataclasses import dataclass, field
from functools import cached_property

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
    blocks: dict[str, list[str]]  # stage -> block names, in order
    spatial: bool
    channel: bool

    @cached_property
    def record_order(self) -> list[str]:
        """Recorded names in the order capture reads them: per block, activation, spatial, channel."""
        kinds = ["out"] + ["spatial"] * self.spatial + ["channel"] * self.channel
        return [f"{b}:{k}" for names in self.blocks.values() for b in names for k in kinds]

    @cached_property
    def reduce(self) -> dict:
        # Block outputs become their channel-mean in the hook: nothing large outlives the block.
        return {name: _channel_mean for name in self.targets if name.endswith(":out")}

    @cached_property
    def reduce_to_numpy(self) -> dict:
        # On the CPU the hooks hand over NumPy views of the maps: no copies, no work afterwards.
        return {name: _channel_mean_numpy if name.endswith(":out") else _numpy for name in self.targets}


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
            blocks, bool(spec.spatial) and has_attn, bool(spec.channel) and has_attn)
    return plan


def _channel_mean(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    return t.mean(dim=1), t.shape[1]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.numpy() if t.dtype == torch.float32 else t.float().numpy()


def _channel_mean_numpy(t: torch.Tensor) -> tuple[np.ndarray, int]:
    # A sum and an in-place division of the small result: half the cost of torch's mean here.
    total = _numpy(t.sum(dim=1))
    total /= t.shape[1]
    return total, t.shape[1]


def _arrays(out: dict, order: list[str]) -> list:
    """Recorded tensors off a GPU: one transfer for everything (one sync), then views of it."""
    tensors = [out[k][0] if k.endswith(":out") else out[k] for k in order]
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1).float().cpu().numpy()
    ends = np.cumsum([t[0].numel() for t in tensors])
    arrays = [flat[:, a:b] for a, b in zip([0, *ends[:-1]], ends)]
    return [(a, out[k][1]) if k.endswith(":out") else a for k, a in zip(order, arrays)]


def capture_attention(model: nn.Module, x: torch.Tensor, attention: str | None = None,
                      keep_graph: bool = False) -> Capture:
    """Run ``model`` once on ``x`` and return every block's maps and the logits.

    With ``keep_graph`` the pass records autograd, and the stage outputs and
    logits stay attached so ``compute_cams`` can take gradients without
    another forward.
    """
    attention = attention or getattr(getattr(model, "config", None), "attention", "none")
    plan = _plan(model, attention)
    on_cpu = x.device.type == "cpu"
    reduce = plan.reduce_to_numpy if on_cpu else plan.reduce
    if keep_graph:  # the stage outputs, kept whole and attached for the CAMs' backward
        recorder = ForwardRecorder({**plan.targets, **plan.graph}, keep_graph=set(plan.graph), reduce=reduce)
    else:
        recorder = ForwardRecorder(plan.targets, reduce=reduce)
    grad_mode = torch.enable_grad() if keep_graph else torch.inference_mode()
    with recorder, grad_mode:
        logits = model(x)
        count_model_call()
    out = recorder.outputs

    values = iter([out[k] for k in plan.record_order] if on_cpu else _arrays(out, plan.record_order))
    blocks: dict[str, list[BlockMaps]] = {}
    for stage, names in plan.blocks.items():
        blocks[stage] = []
        for b in names:
            activation, c = next(values)
            n, h, w = activation.shape
            spatial = next(values).reshape(n, h, w) if plan.spatial else None
            channel = next(values).reshape(n, c) if plan.channel else None
            blocks[stage].append(BlockMaps(b, (c, h, w), activation.reshape(n, h, w), spatial, channel))
    capture = Capture(attention, logits.detach(), blocks)
    if keep_graph:
        capture.graph_logits = logits
        capture.stage_outputs = {stage: out[f"{stage}:graph"] for stage in STAGES}
    return capture
