"""Real-size architectures for the certification benchmark, written here (random weights, throughput only).

- ``cifar_resnet(depth)``: the CIFAR ResNet of He et al. 2016 (Section 4.2) as Cohen et al. certify
  it (``archs/cifar_resnet.py`` in locuslab/smoothing, after bearpaw's pytorch-classification):
  a 3x3 convolution to 16 channels, three stages of (depth - 2) / 6 basic blocks at 16, 32 and 64
  channels (stride 2 between stages, 1x1 convolution shortcuts where the shape changes), 8x8
  average pooling and a linear layer. Depth 110 is Cohen et al.'s CIFAR-10 model; depth 20 is the
  small one the CPU benchmark runs. Input (B, 3, 32, 32).
- ``resnet50()``: the ImageNet ResNet-50 (bottleneck blocks 3-4-6-3, stride on the 3x3 convolution
  as torchvision's v1.5), input (B, 3, 224, 224), 1000 classes. torchvision cannot be installed
  next to this torch, so the definition is here.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 convolution) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand (x4), with a projection shortcut where needed."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = None
        if stride != 1 or inplanes != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def cifar_resnet(depth: int = 110, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet of ``depth`` = 6k + 2 layers (110: Cohen et al.'s), in eval mode, random weights."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6k + 2, got {depth}")
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
    ]
    inplanes = 16
    for stage, planes in enumerate((16, 32, 64)):
        for b in range(blocks):
            layers.append(BasicBlock(inplanes, planes, stride=2 if stage and b == 0 else 1))
            inplanes = planes
    layers += [nn.AvgPool2d(8), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers).eval()


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ImageNet ResNet-50 (25.6M parameters), in eval mode, random weights."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    inplanes = 64
    for stage, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(blocks):
            layers.append(Bottleneck(inplanes, planes, stride=2 if stage and b == 0 else 1))
            inplanes = planes * Bottleneck.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes)]
    return nn.Sequential(*layers).eval()
