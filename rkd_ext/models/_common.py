"""What every model here shares: a backbone, a global-average-pooled neck, a linear head."""
import torch
from torch import nn


def scaled(channels, width):
    """``channels * width`` rounded, at least 1."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return max(1, int(round(channels * width)))


def init_weights(module):
    # He initialisation for convolutions and unit-scale BatchNorm, as in the
    # original ResNet and VGG-BN recipes; the linear head keeps PyTorch's default.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ClassifierWithNeck(nn.Module):
    """backbone -> global average pool (the "neck") -> linear head.

    ``forward(x)`` returns the logits; ``neck_and_logits(x)`` returns the
    (N, neck_dim) pooled features and the logits from one forward pass, which
    is what feature distillation needs.
    """

    def __init__(self, backbone, neck_dim, num_classes):
        super().__init__()
        self.backbone = backbone
        self.neck_dim = neck_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(neck_dim, num_classes)

    def neck_and_logits(self, x):
        neck = torch.flatten(nn.functional.adaptive_avg_pool2d(self.backbone(x), 1), 1)
        return neck, self.fc(neck)

    def forward(self, x):
        return self.neck_and_logits(x)[1]
