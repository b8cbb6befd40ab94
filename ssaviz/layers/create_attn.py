"""Name -> attention layer, in the style of timm's ``create_attn``.

Every layer is built as ``cls(channels)``. The spec also says which submodules
output the attention weights, so capture code finds them without knowing the
classes: a forward hook on ``spatial`` reads an (N, 1, H, W) map, on
``channel`` an (N, C, 1, 1) vector.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .salient import SalientAttn
from .ssa import SSAttn


def se_layer(channels: int) -> nn.Module:
    # timm is imported when a layer is built, not when ssaviz is: it keeps start-up short.
    from timm.layers.squeeze_excite import SEModule

    # rd_divisor=1 keeps the paper's C/16 reduction exactly (timm rounds to multiples of 8).
    return SEModule(channels, rd_ratio=1 / 16, rd_divisor=1)


def cbam_layer(channels: int) -> nn.Module:
    from timm.layers.cbam import CbamModule

    return CbamModule(channels, rd_ratio=1 / 16, rd_divisor=1)


@dataclass(frozen=True)
class AttentionSpec:
    name: str
    layer: Callable[[int], nn.Module] | None  # called as layer(channels)
    title: str
    spatial: str | None = None  # submodule whose output is the spatial map
    channel: str | None = None  # submodule whose output is the channel vector
    channel_is_gate: bool = False  # True: channel values are sigmoid weights in [0, 1]


ATTENTION_TYPES: dict[str, AttentionSpec] = {
    spec.name: spec
    for spec in (
        AttentionSpec("none", None, "ResNet"),
        AttentionSpec("se", se_layer, "SE-ResNet",
                      channel="gate", channel_is_gate=True),
        AttentionSpec("ssa", SSAttn, "SSA-ResNet", spatial="gate", channel="pool"),
        AttentionSpec("salient", SalientAttn, "Salient-ResNet", spatial="gate"),
        AttentionSpec("cbam", cbam_layer, "CBAM-ResNet",
                      spatial="spatial.gate", channel="channel.gate", channel_is_gate=True),
    )
}


def attention_spec(name: str) -> AttentionSpec:
    try:
        return ATTENTION_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r}; choose one of {', '.join(ATTENTION_TYPES)}"
        ) from None


def create_attn(name: str, channels: int) -> nn.Module | None:
    """Build the attention layer called ``name`` for ``channels`` channels (None for 'none')."""
    spec = attention_spec(name)
    return None if spec.layer is None else spec.layer(channels)
