"""Image classifiers for the reference distillation: ResNet-18/34/50 and VGG-11-BN.

Every model has a width multiplier and a ``neck_and_logits(x)`` method that
returns the global-average-pooled features and the logits from one forward pass.
"""
from .resnet import STEMS, BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .vgg import VGG, vgg11_bn

__all__ = ["ARCHS", "STEMS", "BasicBlock", "Bottleneck", "ResNet", "VGG", "build_model",
           "resnet18", "resnet34", "resnet50", "vgg11_bn"]

_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
ARCHS = (*_RESNETS, "vgg11_bn")


def build_model(arch, num_classes, width=1.0, stem="cifar"):
    """The model named ``arch`` (one of :data:`ARCHS`); ``stem`` applies to the ResNets only."""
    if arch in _RESNETS:
        return _RESNETS[arch](num_classes, width, stem)
    if arch == "vgg11_bn":
        return vgg11_bn(num_classes, width)
    raise ValueError(f"build_model: arch must be one of {ARCHS}, got {arch!r}")
