"""contract.preprocessing against torchvision's own transforms, on images of odd sizes and aspects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from contract.preprocessing import Preprocessing, PreprocessingError, placement, preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), [(300, 451), (451, 300), (97, 130), (256, 256), (1000, 240)])
@pytest.mark.parametrize(("resize", "crop", "interpolation"), [(256, 224, "bilinear"), (232, 224, "bilinear"),
                                                                (73, 64, "bicubic")])
def test_shorter_side_and_crop_is_torchvisions_classification_preset(
    height: int, width: int, resize: int, crop: int, interpolation: str
) -> None:
    image = picture(height, width)
    served = Preprocessing(size=(crop, crop), mean=MEAN, std=STD, mode="shorter_side", resize=resize,
                           interpolation=interpolation)
    reference = ImageClassification(crop_size=crop, resize_size=resize, mean=MEAN, std=STD,
                                    interpolation=InterpolationMode(interpolation))(Image.fromarray(image))
    ours, _ = preprocess([image], served)
    np.testing.assert_allclose(ours[0], reference.numpy(), atol=2e-6)


@pytest.mark.parametrize(("sizes"), [[(300, 451)], [(2000, 900)], [(240, 320), (320, 240)], [(64, 48)]])
def test_letterbox_is_torchvisions_detector_transform_and_batching(sizes: list[tuple[int, int]]) -> None:
    images = [picture(h, w, seed) for seed, (h, w) in enumerate(sizes)]
    served = Preprocessing(size=(1344, 1344), mean=MEAN, std=STD, mode="letterbox", resize=800, max_size=1333,
                           antialias=False, size_divisible=32)
    transform = GeneralizedRCNNTransform(800, 1333, list(MEAN), list(STD)).eval()
    expected, _ = transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255 for image in images])
    ours, where = preprocess(images, served)
    assert ours.shape == tuple(expected.tensors.shape)
    assert [place.resized for place in where] == [tuple(size) for size in expected.image_sizes]
    # Source coordinates near 2000 px carry float32 rounding of ~1e-4 px; on noise (neighbours 255 apart)
    # that is up to 0.03 grey levels, 2.5e-4 after / (255 * std). Interpolation weights are otherwise equal.
    np.testing.assert_allclose(ours, expected.tensors.numpy(), atol=1e-3)


def test_boxes_map_back_by_torchvisions_ratios_and_clip_to_the_image() -> None:
    served = Preprocessing(size=(640, 640), mean=MEAN, std=STD, mode="letterbox", resize=320, max_size=640,
                           antialias=False, size_divisible=32)
    where = placement((333, 500), served)
    assert where.resized == (320, 480)
    boxes = np.array([[10.0, 20.0, 470.0, 330.0]], np.float32)
    np.testing.assert_allclose(where.to_original(boxes), [[10 * 500 / 480, 20 * 333 / 320, 470 * 500 / 480, 333]],
                               rtol=1e-6)


def test_centre_crop_placement_maps_boxes_back_to_the_original() -> None:
    served = Preprocessing(size=(224, 224), mean=MEAN, std=STD, mode="shorter_side", resize=256)
    where = placement((512, 1024), served)
    assert where.resized == (256, 512) and where.offset == (-16, -144)
    np.testing.assert_allclose(where.to_original(np.array([[0.0, 0.0, 224.0, 224.0]], np.float32)),
                               [[288, 32, 736, 480]])


def test_channel_order_and_value_range_are_applied() -> None:
    image = picture(4, 4)
    caffe = Preprocessing(size=(4, 4), mean=(123.0, 117.0, 104.0), std=(1.0, 1.0, 1.0), channel_order="BGR",
                          value_range=255.0)
    ours, _ = preprocess([image], caffe)
    expected = (image.astype(np.float32) - np.array([123.0, 117.0, 104.0], np.float32))[:, :, ::-1]
    np.testing.assert_allclose(ours[0], expected.transpose(2, 0, 1), atol=1e-4)


def test_json_round_trips_and_older_exports_mean_square() -> None:
    served = Preprocessing(size=(224, 224), mean=MEAN, std=STD, mode="shorter_side", resize=256)
    assert Preprocessing.from_json(served.to_json()) == served
    old = Preprocessing.from_json('{"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}')
    assert (old.mode, old.interpolation, old.antialias) == ("square", "bilinear", True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "stretch"}, "mode 'stretch' is not one of"),
        ({"crop": "224"}, "unknown preprocessing field"),
        ({"resize": "100"}, "resize 100 must be at least the crop"),
        ({"antialias": "maybe"}, "cannot read 'maybe'"),
        ({"antialias": "false", "interpolation": "bicubic"}, "bilinear interpolation only"),
    ],
)
def test_bad_overrides_name_the_field(overrides: dict[str, str], message: str) -> None:
    served = Preprocessing(size=(224, 224), mean=MEAN, std=STD, mode="shorter_side", resize=256)
    with pytest.raises(PreprocessingError, match=message):
        served.with_overrides(overrides)


def test_overrides_set_sizes_and_lists() -> None:
    served = Preprocessing(size=(224, 224), mean=MEAN, std=STD, mode="shorter_side", resize=256)
    changed = served.with_overrides({"size": "64", "resize": "73", "mean": "0.5,0.5,0.5"})
    assert (changed.size, changed.resize, changed.mean) == ((64, 64), 73, (0.5, 0.5, 0.5))
