"""ResNet whose residual blocks take an attention layer by name.

Follows torchvision's ResNet (same module names, so the same state-dict keys)
with three additions: ``attention`` (a name from ``ssaviz.layers``), placed
after the branch's last BatchNorm and before the shortcut add as ``attn``; a
``width`` multiplier; and a ``stem`` choice: ``imagenet`` (7x7 stride 2 and a
max-pool) or ``small`` (3x3 stride 1, no pool) for 32x32 images.

ReLUs are not in-place, so a hook that keeps a block's output (for Grad-CAM)
still sees the value autograd saved.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .layers import create_attn

STAGES = ("layer1", "layer2", "layer3", "layer4")
STEMS = ("imagenet", "small")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, attention: str = "none"):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn = create_attn(attention, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, attention: str = "none"):
        super().__init__()
        # Stride on the 3x3 conv, as torchvision's ResNet v1.5.
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.attn = create_attn(attention, planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        return self.relu(out + identity)


DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


@dataclass(frozen=True)
class ResNetConfig:
    depth: int = 50
    attention: str = "none"
    width: float = 1.0
    stem: str = "imagenet"
    num_classes: int = 1000


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        if config.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, not {config.depth}")
        if config.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, not {config.stem!r}")
        if not config.width > 0:
            raise ValueError(f"width must be positive, not {config.width}")
        self.config = config
        block, layers = DEPTHS[config.depth]
        widths = [max(1, round(64 * config.width * 2**i)) for i in range(4)]
        self.inplanes = widths[0]

        if config.stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1, config.attention)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, config.attention)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, config.attention)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, config.attention)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3] * block.expansion, config.num_classes)
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int, attention: str) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, attention)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, attention=attention) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each branch: every block starts as identity, which
        # trains deeper nets faster (Goyal et al.). Attention BNs keep weight 1.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def stages(self) -> dict[str, nn.Sequential]:
        return {name: getattr(self, name) for name in STAGES}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_resnet(depth: int = 50, attention: str = "none", width: float = 1.0,
                 stem: str = "imagenet", num_classes: int = 1000) -> ResNet:
    return ResNet(ResNetConfig(depth, attention, width, stem, num_classes))


def attention_parameters(model: nn.Module) -> int:
    """Parameters that the attention layers add (those under an ``attn`` submodule)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".attn." in f".{name}")


def count_flops(model: nn.Module, input_size: int | tuple[int, int]) -> int:
    """Multiply-accumulates x2 for one image, counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    param = next(model.parameters())
    x = torch.zeros(1, 3, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
