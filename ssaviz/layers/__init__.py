"""Attention layers: one small module per idea, created by name."""

from .create_attn import ATTENTION_TYPES, AttentionSpec, attention_spec, create_attn
from .salient import SalientAttn
from .ssa import SSAttn

__all__ = [
    "ATTENTION_TYPES",
    "AttentionSpec",
    "SSAttn",
    "SalientAttn",
    "attention_spec",
    "create_attn",
]
