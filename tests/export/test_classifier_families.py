"""What each small classifier must keep of its paper, checked on the modules themselves (no training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.families import get_family
from export.families.classifier import flip_and_crop, scale_jitter
from export.families.googlenet import Inception
from export.families.resnet import BasicBlock


def _small(name: str) -> tuple[nn.Module, int]:
    family = get_family(name)
    config = family.configs["small"]
    torch.manual_seed(0)
    return family.build(config), config.image_size


def _layers(model: nn.Module, kind: type) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, kind)]


def test_alexnet_small_has_five_convs_three_fc_dropout_and_overlapping_pools() -> None:
    model, _ = _small("alexnet")
    convs, linears = _layers(model, nn.Conv2d), _layers(model, nn.Linear)
    assert len(convs) == 5 and len(linears) == 3 and _layers(model, nn.Dropout)
    assert convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4)
    assert all(p.kernel_size == 3 and p.stride == 2 for p in _layers(model, nn.MaxPool2d))  # overlapping


def test_zfnet_small_has_a_7x7_stride_2_first_conv_and_pooling_switches() -> None:
    model, size = _small("zfnet")
    conv1 = _layers(model, nn.Conv2d)[0]
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)
    images = torch.randn(2, 3, size, size)
    model.eval()
    switched = model.forward_with_switches(images)
    assert len(switched.switches) == 3
    # Switches are argmax positions: unpooling the first pool puts each maximum back where it came from.
    activations = torch.relu(model.conv1(images))
    pooled, indices = F.max_pool2d(activations, 3, 2, 1, return_indices=True)
    assert torch.equal(indices, switched.switches[0])
    unpooled = F.max_unpool2d(pooled, indices, 3, 2, 1, output_size=activations.shape[-2:])
    assert torch.equal(unpooled.flatten(2).gather(2, indices.flatten(2)), pooled.flatten(2))
    with torch.no_grad():
        flat = torch.flatten(switched.features, 1)
        assert torch.equal(model.classifier(flat), model(images))


def test_vgg_small_uses_only_3x3_convs_2x2_pools_and_doubles_filters() -> None:
    model, _ = _small("vgg")
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in _layers(model, nn.Conv2d))
    assert all(p.kernel_size == 2 and p.stride == 2 for p in _layers(model, nn.MaxPool2d))
    widths = []
    for module in model.features:
        if isinstance(module, nn.Conv2d) and module.out_channels not in widths:
            widths.append(module.out_channels)
    assert widths[:4] == [16, 32, 64, 128]


def test_googlenet_small_has_inception_modules_global_pooling_and_aux_heads_only_in_training() -> None:
    model, size = _small("googlenet")
    assert len(_layers(model, Inception)) >= 5 and len(_layers(model, nn.Linear)) == 3  # main fc + aux fc1, fc2
    images = torch.randn(2, 3, size, size)
    model.train()
    logits, aux = model(images)
    assert logits.shape == aux.shape == (2, 8)
    model.eval()
    assert model(images).shape == (2, 8)


def test_resnet_small_is_residual() -> None:
    model, size = _small("resnet")
    blocks = _layers(model, BasicBlock)
    assert len(blocks) == 3
    block = blocks[0].eval()
    x = torch.randn(1, block.conv1.in_channels, size, size)
    with torch.no_grad():
        residual = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), torch.relu(residual + x))  # F(x) + x


def test_augmentations_keep_the_shape_and_follow_the_generator() -> None:
    images = torch.randn(6, 3, 32, 32)
    for augment in (lambda x, g: flip_and_crop(x, g, pad=4), lambda x, g: scale_jitter(x, g, max_scale=1.4)):
        first = augment(images, torch.Generator().manual_seed(1))
        again = augment(images, torch.Generator().manual_seed(1))
        assert first.shape == images.shape and torch.equal(first, again)
        assert not torch.equal(first, images)
