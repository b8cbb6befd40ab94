"""Squeeze and Spatial Attention (SSA).

For a residual branch output X (N, C, H, W):

    seW = GAP(X)                              (N, C, 1, 1)  squeeze vector
    saW = sigmoid(BN1(mean_c(seW * X)))       (N, 1, H, W)  spatial map
    Y   = saW * X

The squeeze vector weights every channel by its own global mean before the
channel-mean, so channels that are strongly active over the whole image shape
the spatial map most. The only learnable parameters are BN1's weight and bias:
two per block.
"""

import torch
from torch import nn


class SSAttn(nn.Module):
    def __init__(self, channels: int, gate_layer: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        # `channels` is unused: SSA needs no per-channel parameters. It is kept so
        # every attention layer has the same constructor shape.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn = nn.BatchNorm2d(1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se_w = self.pool(x)
        sa_w = self.gate(self.bn((se_w * x).mean(dim=1, keepdim=True)))
        return sa_w * x
