"""The synthetic scene generator: determinism, ground-truth consistency, and torch-compatible warps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contract.scenes import COLORS, SHAPES, SPLITS, TEXTURES, affine_sample, make_scene, make_scenes


def test_same_seed_same_scenes_and_different_seed_different_scenes() -> None:
    first, again, other = make_scenes(5, 32, 7), make_scenes(5, 32, 7), make_scenes(5, 32, 8)
    assert all(np.array_equal(a.image, b.image) and a.caption == b.caption for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))


def test_the_splits_of_a_seed_are_their_own_streams_and_reproducible() -> None:
    streams = {split: make_scenes(50, 16, 3, split=split) for split in (None, *SPLITS)}
    images = {split: {scene.image.tobytes() for scene in scenes} for split, scenes in streams.items()}
    for split, drawn in images.items():
        assert len(drawn) == 50
        assert all(not drawn & images[other] for other in images if other != split), split
    again = make_scenes(50, 16, 3, split="test")
    assert all(np.array_equal(a.image, b.image) for a, b in zip(streams["test"], again, strict=True))
    with pytest.raises(ValueError, match="split 'tune' is not one of"):
        make_scenes(1, 16, 3, split="tune")


def test_scene_fields_have_the_documented_shapes_and_types() -> None:
    scene = make_scene(np.random.default_rng(0), 48, objects=3)
    assert scene.image.shape == scene.canonical.shape == (48, 48, 3) and scene.image.dtype == np.uint8
    assert scene.boxes.dtype == np.float32 and scene.boxes.shape[1] == 4
    assert scene.box_labels.dtype == np.int64 and len(scene.box_labels) == len(scene.boxes)
    assert scene.label == scene.box_labels[0]
    assert np.all(scene.boxes[:, 2] > scene.boxes[:, 0]) and np.all(scene.boxes[:, 3] > scene.boxes[:, 1])
    assert np.all((scene.boxes >= 0) & (scene.boxes <= 48))
    assert np.array_equal(scene.theta, np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    assert np.array_equal(scene.image, scene.canonical)


def test_caption_names_every_object_and_the_background() -> None:
    scene = make_scene(np.random.default_rng(3), 32, objects=2)
    words = scene.caption.split()
    assert words[0] == "a" and words[-1] == "background" and words[-2] in TEXTURES
    assert sum(word in SHAPES for word in words) == 2 and sum(word in COLORS for word in words) == 2
    assert SHAPES[scene.label] in words[:3]


def test_a_chosen_texture_is_drawn_every_time() -> None:
    scenes = make_scenes(20, 32, 5, texture=TEXTURES.index("checkered"))
    assert all(scene.caption.endswith("on a checkered background") for scene in scenes)
    assert {scene.label for scene in scenes} != {scenes[0].label}  # the rest stays random


def test_every_class_appears_and_the_main_object_is_large() -> None:
    scenes = make_scenes(400, 32, 1)
    assert {scene.label for scene in scenes} == set(range(len(SHAPES)))
    sides = np.array([min(s.boxes[0, 2] - s.boxes[0, 0], s.boxes[0, 3] - s.boxes[0, 1]) for s in scenes])
    assert sides.min() >= 0.3 * 32


def test_several_objects_barely_overlap() -> None:
    for scene in make_scenes(50, 64, 2, objects=3):
        boxes = scene.boxes
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                ix = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
                iy = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
                smaller = min(np.prod(boxes[i, 2:] - boxes[i, :2]), np.prod(boxes[j, 2:] - boxes[j, :2]))
                assert ix * iy <= 0.25 * smaller


def test_affine_sample_matches_torch_grid_sample() -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=(20, 24, 3)).astype(np.float32)
    theta = np.array([[0.9, -0.3, 0.1], [0.25, 1.1, -0.05]], dtype=np.float32)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    grid = F.affine_grid(torch.from_numpy(theta)[None], list(tensor.shape), align_corners=False)
    expected = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    np.testing.assert_allclose(affine_sample(image, theta), expected[0].permute(1, 2, 0).numpy(), atol=1e-3)


def test_distorted_scene_is_the_canonical_scene_warped_by_theta() -> None:
    scene = make_scene(np.random.default_rng(5), 32, distort=True)
    assert not np.allclose(scene.theta, [[1, 0, 0], [0, 1, 0]])
    warped = np.clip(affine_sample(scene.canonical, scene.theta) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(warped, scene.image)


@pytest.mark.parametrize(("size", "objects"), [(8, 1), (32, 0)])
def test_bad_arguments_are_refused(size: int, objects: int) -> None:
    with pytest.raises(ValueError):
        make_scene(np.random.default_rng(0), size, objects=objects)
