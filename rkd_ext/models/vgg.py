"""VGG-11 with BatchNorm (Simonyan & Zisserman, 2015) and a width multiplier.

As in the mmcls VGG used by the CIFAR-100 seed recipe, the classifier is a single
linear layer on the global-average-pooled last feature map (512 * width
features), not the original 4096-wide fully connected layers.
"""
from torch import nn

from ._common import ClassifierWithNeck, init_weights, scaled

__all__ = ["VGG", "vgg11_bn"]

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(ClassifierWithNeck):
    """A VGG with BatchNorm after every convolution.

    Args:
        cfg: channel counts, with ``"M"`` for a 2x2 max-pool.
        num_classes: size of the linear head.
        width: multiplier of every channel count.
        in_channels: channels of the input images.
    """

    def __init__(self, cfg=_VGG11, num_classes=1000, width=1.0, in_channels=3):
        layers = []
        in_ch = in_channels
        for v in cfg:
            if v == "M":
                # ceil_mode keeps a 1x1 map at 1x1, so inputs smaller than 32x32
                # still work; on even sizes it is the usual floor pooling.
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                out_ch = scaled(v, width)
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
        super().__init__(nn.Sequential(*layers), in_ch, num_classes)
        init_weights(self)


def vgg11_bn(num_classes=1000, width=1.0):
    return VGG(_VGG11, num_classes, width)
