"""A small residual network for 48x48 grayscale faces (GroupNorm basic blocks)."""
from __future__ import annotations

from torch import nn

from .layers import BranchClassifier, conv_gn, groups_for


class BasicBlock(nn.Module):
    """Two 3x3 conv-GN layers with an identity (or strided 1x1 conv-GN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_gn(cin, cout, stride), conv_gn(cout, cout, relu=False))
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                       nn.GroupNorm(groups_for(cout), cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + (x if self.short is None else self.short(x)))


class ResNetBranch(nn.Module):
    """Strided stem then one stage per width, each stage halving resolution; global average pooling."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96), blocks: int = 1):
        super().__init__()
        layers: list[nn.Module] = [conv_gn(1, widths[0], stride=2)]
        cin = widths[0]
        for w in widths[1:]:
            layers.append(BasicBlock(cin, w, stride=2))
            layers += [BasicBlock(w, w) for _ in range(blocks - 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


class ResNet(BranchClassifier):
    """The ResNet branch alone with a linear head."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (24, 48, 96), blocks: int = 1, dropout: float = 0.2):
        super().__init__(ResNetBranch(tuple(widths), blocks), num_classes, dropout)
