"""ResNet-18/34/50 (He et al., 2016) with a CIFAR or an ImageNet stem and a width multiplier.

The blocks follow the common "v1.5" layout (the stride of a Bottleneck sits on its
3x3 convolution). The CIFAR stem is a single 3x3 stride-1 convolution with no
max-pool, as in the CIFAR ResNets of mmcls and RepDistiller; the ImageNet stem is
the 7x7 stride-2 convolution followed by a 3x3 stride-2 max-pool.
"""
from torch import nn

from ._common import ClassifierWithNeck, init_weights, scaled

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]

STEMS = ("cifar", "imagenet")


def conv3x3(in_ch, out_ch, stride=1):
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch, out_ch, stride=1):
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, in_ch, planes, stride=1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, in_ch, planes, stride=1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_ch, out_ch, stride):
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class ResNet(ClassifierWithNeck):
    """A ResNet whose neck is the global-average-pooled output of its last stage.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages.
        num_classes: size of the linear head.
        width: multiplier of every channel count (0.5 halves them all); the neck
            has ``512 * width * block.expansion`` features.
        stem: ``"cifar"`` (for ~32x32 inputs) or ``"imagenet"`` (for 64x64 and up).
        in_channels: channels of the input images.
    """

    def __init__(self, block, layers, num_classes=1000, width=1.0, stem="cifar", in_channels=3):
        if stem not in STEMS:
            raise ValueError(f"ResNet: stem must be one of {STEMS}, got {stem!r}")
        stem_ch = scaled(64, width)
        if stem == "cifar":
            stem_layers = [conv3x3(in_channels, stem_ch), nn.BatchNorm2d(stem_ch), nn.ReLU(inplace=True)]
        else:
            stem_layers = [nn.Conv2d(in_channels, stem_ch, 7, stride=2, padding=3, bias=False),
                           nn.BatchNorm2d(stem_ch), nn.ReLU(inplace=True),
                           nn.MaxPool2d(3, stride=2, padding=1)]
        stages = []
        in_ch = stem_ch
        for i, blocks in enumerate(layers):
            planes = scaled(64 * 2 ** i, width)
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        super().__init__(nn.Sequential(*stem_layers, *stages), in_ch, num_classes)
        self.stem = stem
        init_weights(self)


def resnet18(num_classes=1000, width=1.0, stem="cifar"):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, stem)


def resnet34(num_classes=1000, width=1.0, stem="cifar"):
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, width, stem)


def resnet50(num_classes=1000, width=1.0, stem="cifar"):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width, stem)
