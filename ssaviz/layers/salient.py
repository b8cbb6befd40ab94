"""Salient block: the SSA authors' earlier spatial gate.

    w = sigmoid(BN1(conv1x1_{C->1}(X)));  Y = w * X

C + 1 conv parameters (weight and bias) plus BN1's two.
"""

import torch
from torch import nn


class SalientAttn(nn.Module):
    def __init__(self, channels: int, gate_layer: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        self.bn = nn.BatchNorm2d(1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.bn(self.conv(x))) * x
