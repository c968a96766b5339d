"""The distillation models: shapes, neck sizes, stems, and the layouts the recipes name."""
import pytest
import torch
from torch import nn

from rkd_ext.models import ARCHS, BasicBlock, Bottleneck, ResNet, build_model, resnet18, resnet34, resnet50, vgg11_bn

# Expected neck width at width multiplier 1 (512 for the BasicBlock ResNets and
# VGG-11, 4 x 512 for the Bottleneck ResNet-50).
NECK_AT_WIDTH_1 = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "vgg11_bn": 512}


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_neck_and_logits_shapes_on_cifar_inputs(arch, width):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, width=width, stem="cifar").eval()
    x = torch.randn(3, 3, 32, 32)
    neck, logits = model.neck_and_logits(x)
    assert model.neck_dim == NECK_AT_WIDTH_1[arch] * width
    assert neck.shape == (3, NECK_AT_WIDTH_1[arch] * width)
    assert logits.shape == (3, 7)
    # forward() is the same computation, logits only.
    torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    # The neck is the pooled ReLU output, and the head a linear map of it.
    assert (neck >= 0).all()
    torch.testing.assert_close(logits, neck @ model.fc.weight.t() + model.fc.bias)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("size", [64, 96])
def test_imagenet_stem_on_larger_inputs(arch, size):
    model = build_model(arch, num_classes=5, width=0.125, stem="imagenet").eval()
    neck, logits = model.neck_and_logits(torch.randn(2, 3, size, size))
    assert neck.shape == (2, NECK_AT_WIDTH_1[arch] // 8) and logits.shape == (2, 5)


def _last_stage_size(model, size):
    return model.backbone(torch.randn(1, 3, size, size)).shape[-1]


def test_stems_downsample_as_specified():
    # CIFAR stem: stride 1, no pool, so three stride-2 stages give 32 / 8 = 4;
    # ImageNet stem: stride 2 and a stride-2 pool first, so 64 / 32 = 2.
    assert _last_stage_size(resnet18(10, 0.125, "cifar").eval(), 32) == 4
    assert _last_stage_size(resnet18(10, 0.125, "imagenet").eval(), 64) == 2
    assert _last_stage_size(resnet18(10, 0.125, "imagenet").eval(), 224) == 7
    cifar_stem = resnet18(10, 0.125, "cifar").backbone[0]
    imagenet_stem = resnet18(10, 0.125, "imagenet").backbone[0]
    assert cifar_stem.kernel_size == (3, 3) and cifar_stem.stride == (1, 1)
    assert imagenet_stem.kernel_size == (7, 7) and imagenet_stem.stride == (2, 2)
    assert _count(resnet18(10, 0.125, "cifar"), nn.MaxPool2d) == 0
    assert _count(resnet18(10, 0.125, "imagenet"), nn.MaxPool2d) == 1


def test_block_layouts_match_the_resnet_paper():
    for ctor, block, layers in ((resnet18, BasicBlock, [2, 2, 2, 2]), (resnet34, BasicBlock, [3, 4, 6, 3]),
                                (resnet50, Bottleneck, [3, 4, 6, 3])):
        model = ctor(10, 1.0)
        stages = list(model.backbone)[-4:]
        assert [len(s) for s in stages] == layers
        assert all(isinstance(b, block) for s in stages for b in s)
        # convolutions: stem + blocks * (2 or 3) + projection shortcuts (one per stage, ResNet-18/34 skip stage 1)
        per_block = 2 if block is BasicBlock else 3
        shortcuts = 4 if block is Bottleneck else 3
        assert _count(model, nn.Conv2d) == 1 + per_block * sum(layers) + shortcuts


def test_vgg11_bn_layout_and_small_inputs():
    model = vgg11_bn(100, 1.0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert _count(model, nn.BatchNorm2d) == 8 and _count(model, nn.MaxPool2d) == 5
    assert model.neck_dim == 512
    # Five 2x2 pools take 32x32 to 1x1; smaller inputs must not collapse to 0x0.
    small = vgg11_bn(4, 0.125).eval()
    assert small.backbone(torch.randn(1, 3, 32, 32)).shape[-2:] == (1, 1)
    assert small(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_parameter_counts_match_the_published_models():
    # torchvision's ImageNet ResNet-18/34/50 (1000 classes): 11,689,512 / 21,797,672 / 25,557,032 parameters.
    assert sum(p.numel() for p in resnet18(1000, 1.0, "imagenet").parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet34(1000, 1.0, "imagenet").parameters()) == 21_797_672
    assert sum(p.numel() for p in resnet50(1000, 1.0, "imagenet").parameters()) == 25_557_032


def test_width_scales_every_layer():
    half, full = resnet18(10, 0.5), resnet18(10, 1.0)
    for a, b in zip(half.modules(), full.modules()):
        if isinstance(a, nn.Conv2d):
            assert b.out_channels == 2 * a.out_channels


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    for arch in ARCHS:
        model = build_model(arch, 3, 0.125)
        neck, logits = model.neck_and_logits(torch.randn(4, 3, 16, 16))
        (logits.sum() + neck.sum()).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{arch}: no gradient for {missing}"


def test_bad_arguments_are_refused_with_their_name():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model("resnet101", 10)
    with pytest.raises(ValueError, match="stem must be one of"):
        ResNet(BasicBlock, [2, 2, 2, 2], 10, 1.0, stem="tiny")
    with pytest.raises(ValueError, match="width must be > 0"):
        resnet18(10, 0.0)
