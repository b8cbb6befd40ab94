"""Capture what a network attends to, in one forward pass.

Per block: the spatial map of its attention (SSA ``saW``, Salient ``w``, CBAM
spatial map) and its channel vector (SE excitation, CBAM channel attention,
SSA squeeze vector ``seW``); per stage, an activation map (channel-mean of the
stage's output). Plus logits and top-k. The same pass keeps the stage outputs
attached to autograd so CAMs need no second forward.

Attention maps are tiny and the network computes them anyway, so every
block's are kept. An activation map is not free: it reads the whole block
output once more. A comparison shows only the stages' maps, so only those are made;
``block_activations=True`` adds every block's (the stage-by-stage view of a
network without spatial attention).
"""

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .hooks import ForwardRecorder, plan_records
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
    activation: np.ndarray | None  # (N, H, W) channel-mean of the block's output (every stage's last block)
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
    attention_targets: dict[str, nn.Module]  # every block's attention submodules
    stage_outputs: dict[str, nn.Module]  # "layer1.1:out" -> the stage's last block
    inner_outputs: dict[str, nn.Module]  # the other blocks, recorded on request
    graph: dict[str, nn.Module]  # "layer1:graph" -> the stage's last block, kept attached for CAMs
    blocks: dict[str, list[str]]  # stage -> block names, in order
    spatial: bool
    channel: bool
    _records: dict = field(default_factory=dict, repr=False)  # built once per kind of pass
    _orders: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        # stage -> [(block, its activation's name, spatial map's, channel vector's)]: looked up per capture
        self.keys = {stage: [(b, f"{b}:out", f"{b}:spatial", f"{b}:channel") for b in names]
                     for stage, names in self.blocks.items()}

    def targets(self, block_activations: bool) -> dict[str, nn.Module]:
        extra = self.inner_outputs if block_activations else {}
        return {**self.attention_targets, **self.stage_outputs, **extra}

    def record_order(self, block_activations: bool) -> list[str]:
        """Recorded names in the order capture reads them: per block, activation, spatial, channel."""
        order = self._orders.get(block_activations)
        if order is None:
            order = []
            for names in self.blocks.values():
                for b in names:
                    if block_activations or b == names[-1]:
                        order.append(f"{b}:out")
                    if self.spatial:
                        order.append(f"{b}:spatial")
                    if self.channel:
                        order.append(f"{b}:channel")
            self._orders[block_activations] = order
        return order

    def records(self, keep_graph: bool, on_cpu: bool, block_activations: bool) -> dict:
        """The recorder's table for one kind of pass, built once per plan."""
        key = (keep_graph, on_cpu, block_activations)
        if key not in self._records:
            targets = self.targets(block_activations)
            # Block outputs become their channel-mean in the hook: nothing large outlives the block.
            # On the CPU the hooks hand over NumPy views of the maps: no copies, no work afterwards.
            reduce = {name: (_channel_mean_numpy if on_cpu else _channel_mean) if name.endswith(":out")
                      else (_numpy if on_cpu else None) for name in targets}
            if keep_graph:  # the stage outputs, kept whole and attached for the CAMs' backward
                self._records[key] = plan_records({**targets, **self.graph}, set(self.graph), reduce)
            else:
                self._records[key] = plan_records(targets, reduce=reduce)
        return self._records[key]


_PLANS: "weakref.WeakKeyDictionary[nn.Module, _Plan]" = weakref.WeakKeyDictionary()


def _plan(model: nn.Module, attention: str) -> _Plan:
    plan = _PLANS.get(model)
    if plan is None or plan.attention != attention:
        spec = attention_spec(attention)
        attn_targets, stage_outputs, inner_outputs, blocks = {}, {}, {}, {}
        for stage in STAGES:
            blocks[stage] = []
            layer = getattr(model, stage)
            for i, block in enumerate(layer):
                name = f"{stage}.{i}"
                blocks[stage].append(name)
                (stage_outputs if i == len(layer) - 1 else inner_outputs)[f"{name}:out"] = block
                attn = getattr(block, "attn", None)
                if attn is not None and spec.spatial:
                    attn_targets[f"{name}:spatial"] = attn.get_submodule(spec.spatial)
                if attn is not None and spec.channel:
                    attn_targets[f"{name}:channel"] = attn.get_submodule(spec.channel)
        has_attn = getattr(getattr(model, STAGES[0])[0], "attn", None) is not None
        plan = _PLANS[model] = _Plan(
            attention, attn_targets, stage_outputs, inner_outputs,
            {f"{s}:graph": getattr(model, s)[-1] for s in STAGES},
            blocks, bool(spec.spatial) and has_attn, bool(spec.channel) and has_attn)
    return plan


def _channel_mean(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    return t.mean(dim=1), t.shape[1]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.numpy() if t.dtype == torch.float32 else t.float().numpy()


def _channel_mean_numpy(t: torch.Tensor) -> tuple[np.ndarray, int]:
    return _numpy(t.mean(dim=1)), t.shape[1]


def _arrays(out: dict, order: list[str]) -> list:
    """Recorded tensors off a GPU: one transfer for everything (one sync), then views of it."""
    tensors = [out[k][0] if k.endswith(":out") else out[k] for k in order]
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1).float().cpu().numpy()
    ends = np.cumsum([t[0].numel() for t in tensors])
    arrays = [flat[:, a:b].reshape(t.shape) for t, a, b in zip(tensors, [0, *ends[:-1]], ends)]
    return [(a, out[k][1]) if k.endswith(":out") else a for k, a in zip(order, arrays)]


def capture_attention(model: nn.Module, x: torch.Tensor, attention: str | None = None,
                      keep_graph: bool = False, block_activations: bool = False) -> Capture:
    """Run ``model`` once on ``x`` and return every block's maps and the logits.

    With ``keep_graph`` the pass records autograd, and the stage outputs and
    logits stay attached so ``compute_cams`` can take gradients without
    another forward. ``block_activations`` adds the activation map of every
    block, not only of each stage's last.
    """
    attention = attention or getattr(getattr(model, "config", None), "attention", "none")
    plan = _plan(model, attention)
    on_cpu = x.device.type == "cpu"
    recorder = ForwardRecorder(records=plan.records(keep_graph, on_cpu, block_activations))
    grad_mode = torch.enable_grad() if keep_graph else torch.inference_mode()
    with recorder, grad_mode:
        logits = model(x)
        count_model_call()
    out = recorder.outputs

    # On the CPU the hooks left NumPy arrays already; elsewhere they come over in one transfer.
    if on_cpu:
        values = out
    else:
        order = plan.record_order(block_activations)
        values = dict(zip(order, _arrays(out, order)))
    blocks: dict[str, list[BlockMaps]] = {}
    n = x.shape[0]
    for stage, keys in plan.keys.items():
        # Every block of a stage has the shape of its last (the first block does the downsampling).
        last, c = values[keys[-1][1]]
        h, w = last.shape[1:]
        blocks[stage] = [
            BlockMaps(b, (c, h, w), values[out_key][0] if out_key in values else None,
                      values[spatial_key].reshape(n, h, w) if plan.spatial else None,
                      values[channel_key].reshape(n, c) if plan.channel else None)
            for b, out_key, spatial_key, channel_key in keys]
    capture = Capture(attention, logits.detach(), blocks)
    if keep_graph:
        capture.graph_logits = logits
        capture.stage_outputs = {stage: out[f"{stage}:graph"] for stage in STAGES}
    return capture
