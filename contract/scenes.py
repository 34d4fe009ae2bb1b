"""Procedural synthetic scenes: coloured shapes on textured backgrounds, with ground truth for every task.

Numpy only: the export trains and evaluates on these scenes; the demo, the benchmarks and the tests draw
their images from them.
Every scene is deterministic from the random generator it is drawn with, so ``make_scenes(n, size, seed)``
returns the same scenes on every machine. The export draws its data from three splits of each seed
(``split="train"``, ``"validation"``, ``"test"``): independent streams, so that recipes are tuned on
validation scenes and the reported quality comes from test scenes neither training nor tuning saw.

Ground truth per scene: the class of the main object (classify), boxes and labels of all objects (detect),
a caption (caption), and the affine distortion applied to the canonical scene (warp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract.warps import sample

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")
"""Class names; index = class id = line of labels.txt."""

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
_COLOR_RGB = np.array(
    [
        (230, 30, 30),
        (30, 200, 40),
        (40, 70, 240),
        (240, 230, 30),
        (220, 40, 220),
        (30, 220, 230),
        (250, 140, 20),
        (245, 245, 245),
    ],
    dtype=np.float32,
)

TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered", "dotted", "noisy")

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""Data splits of the export: train (fit), validation (tune recipes on), test (the reported quality)."""

# Object scale (the shape's circumscribed radius as a fraction of the image side): a lone object is large
# and central so that small CNNs learn it quickly; several objects are smaller and kept apart.
_SINGLE_RADIUS = (0.30, 0.42)
_MULTI_RADIUS = (0.13, 0.20)
_MAX_MULTI_IOU = 0.05  # placement rejects objects overlapping an earlier one more than this

# Distortion ranges (warp task): rotation, isotropic scale and translation in normalised coordinates.
_MAX_ROTATION_DEG = 35.0
_SCALE_RANGE = (0.8, 1.25)
_MAX_SHIFT = 0.15


@dataclass(frozen=True)
class Scene:
    """One sample with ground truth for every task.

    image: (H, W, 3) uint8, what the model sees (distorted when drawn with distort=True).
    canonical: (H, W, 3) uint8, the same scene undistorted.
    label: class id (index into SHAPES) of the main (first) object.
    boxes: (K, 4) float32 x1, y1, x2, y2 in pixels of ``image``.
    box_labels: (K,) int64 class ids, same order as boxes.
    caption: deterministic text, e.g. "a red star on a striped background".
    theta: (2, 3) float32 affine used to make ``image`` from ``canonical`` in torch's affine_grid
        convention (output -> input normalised coordinates, align_corners=False, zero padding);
        the identity when not distorted.
    """

    image: np.ndarray
    canonical: np.ndarray
    label: int
    boxes: np.ndarray
    box_labels: np.ndarray
    caption: str
    theta: np.ndarray


def _regular_polygon(sides: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(sides) / sides
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _inside_convex(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Mask of points (u, v) inside a convex polygon whose vertices go by increasing angle."""
    mask = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        mask &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return mask


_TRIANGLE = _regular_polygon(3, 1.0, -math.pi / 2)  # apex up on screen (v grows downwards)
_HEXAGON = _regular_polygon(6, 0.95, 0.0)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of a shape in its own frame: (u, v) normalised so that the shape fits the unit disc."""
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 0.9
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.68
    if name == "triangle":
        return _inside_convex(u, v, _TRIANGLE)
    if name == "star":
        r = np.hypot(u, v)
        angle = np.mod(np.arctan2(v, u) + math.pi / 2, 2 * math.pi / 5) / (2 * math.pi / 5)
        reach = 0.42 + 0.58 * np.abs(1 - 2 * angle)  # 1.0 at the points, 0.42 between them
        return r <= reach
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if name == "diamond":
        return np.abs(u) + np.abs(v) * 0.8 <= 0.9
    if name == "hexagon":
        return _inside_convex(u, v, _HEXAGON)
    if name == "ring":
        rr = u * u + v * v
        return (rr <= 0.95) & (rr >= 0.35)
    raise ValueError(f"unknown shape index {shape}")


def _background(rng: np.random.Generator, size: int, texture: int) -> np.ndarray:
    """(size, size, 3) float32 muted background in [0, 255] so saturated objects stand out."""
    base = rng.uniform(50, 130, size=3).astype(np.float32)
    other = np.clip(base + rng.uniform(-45, 45, size=3), 20, 160).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    name = TEXTURES[texture]
    period = rng.uniform(size / 10, size / 5)
    if name == "plain":
        weight = np.zeros((size, size), np.float32)
    elif name == "striped":
        angle = rng.uniform(0, math.pi)
        weight = (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif name == "checkered":
        weight = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    elif name == "dotted":
        cx = np.mod(xx, period) - period / 2
        cy = np.mod(yy, period) - period / 2
        weight = (cx * cx + cy * cy <= (period / 4) ** 2).astype(np.float32)
    else:  # noisy
        weight = rng.uniform(0, 1, size=(size, size)).astype(np.float32)
    return base + (other - base) * weight[..., None]


def _draw_object(
    canvas: np.ndarray, shape: int, color: int, cx: float, cy: float, radius: float, angle: float
) -> list[float]:
    """Paint one shape into the float canvas in place (2x2 supersampled edges for smooth outlines).

    Returns the tight box [x1, y1, x2, y2] (pixels) of the painted samples.
    """
    size = canvas.shape[0]
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, size)
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, size)
    offsets = np.array([0.25, 0.75], dtype=np.float32)
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + offsets[None, :]).reshape(-1)
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offsets[None, :]).reshape(-1)
    dy, dx = np.meshgrid((ys - cy) / radius, (xs - cx) / radius, indexing="ij")
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u = cos_a * dx + sin_a * dy
    v = -sin_a * dx + cos_a * dy
    mask = _shape_mask(shape, u, v)
    coverage = mask.astype(np.float32).reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3))[..., None]
    region = canvas[y0:y1, x0:x1]
    region += (_COLOR_RGB[color] - region) * coverage
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [xs[cols[0]] - 0.25, ys[rows[0]] - 0.25, xs[cols[-1]] + 0.25, ys[rows[-1]] + 0.25]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes x1, y1, x2, y2 (0 when both are empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _place_objects(rng: np.random.Generator, size: int, objects: int) -> list[tuple[float, float, float]]:
    """Centres and radii (pixels): one large central object, or several small ones kept apart."""
    if objects == 1:
        radius = rng.uniform(*_SINGLE_RADIUS) * size
        jitter = size / 2 - radius
        cx, cy = size / 2 + rng.uniform(-jitter, jitter, size=2) * 0.5
        return [(float(cx), float(cy), float(radius))]
    placed: list[tuple[float, float, float]] = []
    boxes: list[np.ndarray] = []
    for _ in range(objects * 50):
        if len(placed) == objects:
            break
        radius = rng.uniform(*_MULTI_RADIUS) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        box = np.array([cx - radius, cy - radius, cx + radius, cy + radius])
        if all(box_iou(box, other) <= _MAX_MULTI_IOU for other in boxes):
            placed.append((float(cx), float(cy), float(radius)))
            boxes.append(box)
    return placed


def _random_theta(rng: np.random.Generator) -> np.ndarray:
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    scale = rng.uniform(*_SCALE_RANGE)
    tx, ty = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=2)
    cos_a, sin_a = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[cos_a, -sin_a, tx], [sin_a, cos_a, ty]], dtype=np.float32)


def affine_sample(image: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Warp an (H, W, C) image as torch's ``grid_sample(x, affine_grid(theta))`` does.

    Bilinear, align_corners=False, zeros outside the input. Returns float32 of the same shape.
    """
    height, width = image.shape[:2]
    xs = (2 * np.arange(width, dtype=np.float32) + 1) / width - 1
    ys = (2 * np.arange(height, dtype=np.float32) + 1) / height - 1
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    sx = theta[0, 0] * gx + theta[0, 1] * gy + theta[0, 2]
    sy = theta[1, 0] * gx + theta[1, 1] * gy + theta[1, 2]
    return sample(image, np.stack([sx, sy], axis=-1))


def _distorted_box(box: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    """Box of a canonical-image box's corners after the warp (output = inverse of theta's map)."""
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
    normalised = (2 * corners) / size - 1  # pixel edges -> normalised coords (align_corners=False)
    inverse = np.linalg.inv(theta[:, :2].astype(np.float64))
    mapped = (normalised - theta[:, 2]) @ inverse.T
    pixels = (mapped + 1) * size / 2
    x1, y1 = np.clip(pixels.min(axis=0), 0, size)
    x2, y2 = np.clip(pixels.max(axis=0), 0, size)
    return np.array([x1, y1, x2, y2], dtype=np.float32)


def describe(shapes: list[int], colors: list[int], texture: int) -> str:
    """The caption of a scene: objects in drawing order, then the background."""
    things = " and ".join(f"a {COLORS[c]} {SHAPES[s]}" for s, c in zip(shapes, colors, strict=True))
    return f"{things} on a {TEXTURES[texture]} background"


def make_scene(
    rng: np.random.Generator, size: int, *, objects: int = 1, distort: bool = False, texture: int | None = None
) -> Scene:
    """Draw one scene of ``size`` x ``size`` pixels with ``objects`` shapes (the first is the main one).

    texture: index into TEXTURES for the background; None draws it at random (the default data set).
    """
    if size < 16:
        raise ValueError(f"scene size must be at least 16 pixels, got {size}")
    if objects < 1:
        raise ValueError(f"a scene needs at least one object, got {objects}")
    if texture is None:
        texture = int(rng.integers(len(TEXTURES)))
    canvas = _background(rng, size, texture)
    placements = _place_objects(rng, size, objects)
    shapes = [int(s) for s in rng.integers(len(SHAPES), size=len(placements))]
    colors = [int(c) for c in rng.integers(len(COLORS), size=len(placements))]
    boxes = []
    for (cx, cy, radius), shape, color in zip(placements, shapes, colors, strict=True):
        boxes.append(_draw_object(canvas, shape, color, cx, cy, radius, angle=rng.uniform(-0.35, 0.35)))
    canonical = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    box_array = np.clip(np.array(boxes, dtype=np.float32), 0, size)
    theta = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    image = canonical
    if distort:
        theta = _random_theta(rng)
        image = np.clip(affine_sample(canonical, theta) + 0.5, 0, 255).astype(np.uint8)
        box_array = np.stack([_distorted_box(b, theta, size) for b in box_array])
    return Scene(
        image=image,
        canonical=canonical,
        label=shapes[0],
        boxes=box_array,
        box_labels=np.array(shapes, dtype=np.int64),
        caption=describe(shapes, colors, texture),
        theta=theta,
    )


def make_scenes(
    count: int,
    size: int,
    seed: int,
    *,
    objects: int = 1,
    distort: bool = False,
    texture: int | None = None,
    split: str | None = None,
) -> list[Scene]:
    """``count`` scenes drawn from one generator seeded with ``seed`` (same seed -> same scenes).

    split: one of SPLITS draws from that split's own stream of ``seed`` (numpy's SeedSequence spawn key:
    statistically independent of the other splits' and of the plain stream); None: the plain stream.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    spawn_key = () if split is None else (SPLITS.index(split),)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn_key))
    return [make_scene(rng, size, objects=objects, distort=distort, texture=texture) for _ in range(count)]


def stack_images(scenes: list[Scene], *, canonical: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 batch of the scenes' images (or canonical images)."""
    return np.stack([scene.canonical if canonical else scene.image for scene in scenes])


def stack_labels(scenes: list[Scene]) -> np.ndarray:
    """(N,) int64 main-object class ids."""
    return np.array([scene.label for scene in scenes], dtype=np.int64)
