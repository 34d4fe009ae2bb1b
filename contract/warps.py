"""The spatial transformer's three transforms in numpy: sampling grids, random distortions, known inverses.

Numpy only (no torch), like contract.scenes: the demo draws projective and thin-plate-spline distorted
scenes with it, and the export trains each STN variant on distortions of its own kind. Every transform maps
*output* pixel centres to *input* coordinates, normalised to [-1, 1] with align_corners=False, the
convention of torch's ``affine_grid`` / ``grid_sample`` (Jaderberg et al. 2015, section 3.2):

- affine: theta (2, 3);
- projective: a homography (3, 3) with h33 = 1 (8 free numbers), x_in = (H @ [x, y, 1]) / its third row;
- tps: the input positions (K, 2) of K = n x n control points that sit on ``control_grid(n)`` in the
  output; between them a thin-plate spline (Bookstein 1989; the paper's section 3.1) interpolates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TRANSFORMS: tuple[str, ...] = ("affine", "projective", "tps")
"""Transform names: the config.pbtxt ``transform`` parameter of a warp model and the Warp answer's field."""

#: Projective distortions move each corner of the image by up to this much (normalised units; the side is 2).
MAX_CORNER_SHIFT = 0.25
#: Thin-plate-spline distortions move each point of a DISTORTION_GRID x DISTORTION_GRID control grid by up to
#: this much (normalised units): a smooth bend, which the STN's finer grid of control points can undo.
MAX_CONTROL_SHIFT = 0.2
DISTORTION_GRID = 3
_INVERSE_ITERATIONS = 30


def pixel_centres(height: int, width: int) -> np.ndarray:
    """float64 (H * W, 2): (x, y) of every pixel centre, row-major, normalised with align_corners=False."""
    xs = (2 * np.arange(width) + 1) / width - 1
    ys = (2 * np.arange(height) + 1) / height - 1
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.reshape(-1), grid_y.reshape(-1)], axis=1)


@functools.lru_cache(maxsize=8)
def control_grid(n: int) -> np.ndarray:
    """float64 (n * n, 2), read-only: the thin-plate spline's control points, an n x n grid from corner to
    corner, row-major."""
    if n < 3:
        raise ValueError(f"a thin-plate-spline control grid needs at least 3 x 3 points, got {n} x {n}")
    line = np.linspace(-1.0, 1.0, n)
    grid_y, grid_x = np.meshgrid(line, line, indexing="ij")
    points = np.stack([grid_x.reshape(-1), grid_y.reshape(-1)], axis=1)
    points.flags.writeable = False
    return points


def _radial(points: np.ndarray, control: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2 between every point (N, 2) and control point (K, 2): (N, K), U(0) = 0."""
    squared = ((points[:, None, :] - control[None, :, :]) ** 2).sum(axis=2)
    return squared * np.log(np.where(squared > 0, squared, 1.0))


def tps_matrix(points: np.ndarray, grid: int) -> np.ndarray:
    """float64 (N, K): ``tps_matrix(points, n) @ sources`` is where the thin-plate spline that takes control
    point k of ``control_grid(n)`` to sources[k] (K, 2) takes each of `points` (N, 2).

    The spline's weights solve Bookstein's system L [w; a] = [sources; 0] with L = [[U(c, c), P], [P^T, 0]]
    and P = [1, x, y] of the control points; L depends on the control points only, so its inverse folds into
    one fixed matrix and the grid generator is a single matmul (how the served graph computes it).
    """
    control = control_grid(grid)
    features = np.concatenate([_radial(points, control), np.ones((len(points), 1)), points], axis=1)
    return features @ _spline_weights(grid)


@functools.lru_cache(maxsize=8)
def _spline_weights(grid: int) -> np.ndarray:
    """(K + 3, K): control points' sources -> the spline's [w; a] (the first K columns of L's inverse)."""
    control = control_grid(grid)
    count = len(control)
    affine = np.concatenate([np.ones((count, 1)), control], axis=1)
    system = np.zeros((count + 3, count + 3))
    system[:count, :count] = _radial(control, control)
    system[:count, count:] = affine
    system[count:, :count] = affine.T
    return np.linalg.inv(system)[:, :count]


def apply_homography(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a (3, 3) homography, with the projective division."""
    mapped = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ homography.T
    return mapped[:, :2] / mapped[:, 2:]


def homography_from_corners(corners: np.ndarray) -> np.ndarray:
    """The (3, 3) homography (h33 = 1) taking the image's corners (-1, -1), (1, -1), (1, 1), (-1, 1) to
    `corners` (4, 2) (the direct linear transform of four correspondences)."""
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    rows, targets = [], []
    for (x, y), (u, v) in zip(square, corners, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        targets += [u, v]
    solution = np.linalg.solve(np.array(rows), np.array(targets))
    return np.append(solution, 1.0).reshape(3, 3)


def sample(image: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Bilinear resampling of an (H, W, C) image at `source` (h, w, 2) normalised (x, y) input positions,
    as torch's ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``: float32 (h, w, C)."""
    height, width = image.shape[:2]
    px = ((source[..., 0] + 1) * width - 1) / 2
    py = ((source[..., 1] + 1) * height - 1) / 2
    x0 = np.floor(px).astype(np.int64)
    y0 = np.floor(py).astype(np.int64)
    wx = (px - x0)[..., None]
    wy = (py - y0)[..., None]
    pixels = image.astype(np.float32)
    out = np.zeros((*source.shape[:2], image.shape[2]), dtype=np.float32)
    for dy, weight_y in ((0, 1 - wy), (1, wy)):
        for dx, weight_x in ((0, 1 - wx), (1, wx)):
            xi, yi = x0 + dx, y0 + dy
            valid = ((xi >= 0) & (xi < width) & (yi >= 0) & (yi < height))[..., None]
            values = pixels[np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)]
            out += np.where(valid, values, 0.0) * weight_x * weight_y
    return out


def source_grid(transform: str, theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 (H, W, 2): where each output pixel reads the input, for a `transform`'s theta (affine (2, 3),
    projective (3, 3), tps (K, 2)): the numpy twin of the served graph's grid generator, for checking it."""
    centres = pixel_centres(height, width)
    if transform == "affine":
        source = centres @ theta[:, :2].T + theta[:, 2]
    elif transform == "projective":
        source = apply_homography(theta, centres)
    elif transform == "tps":
        source = tps_matrix(centres, math.isqrt(len(theta))) @ theta
    else:
        raise ValueError(f"unknown transform {transform!r}; use one of {TRANSFORMS}")
    return source.reshape(height, width, 2)


@dataclass(frozen=True)
class Distortion:
    """One random distortion of a scene and the transform parameters that undo it.

    source: float64 (H * W, 2), where each pixel of the distorted image is read from in the canonical one.
    inverse: the parameters an STN of this kind should regress so that its warp restores the canonical
        scene: projective (3, 3) exact; tps (K, 2) exact at the control points.
    """

    source: np.ndarray
    inverse: np.ndarray


def random_projective(rng: np.random.Generator, size: int) -> Distortion:
    """A homography moving each image corner by up to MAX_CORNER_SHIFT (perspective, shear, scale, shift)."""
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    homography = homography_from_corners(corners + rng.uniform(-MAX_CORNER_SHIFT, MAX_CORNER_SHIFT, (4, 2)))
    inverse = np.linalg.inv(homography)
    return Distortion(apply_homography(homography, pixel_centres(size, size)), inverse / inverse[2, 2])


def random_tps(rng: np.random.Generator, size: int, grid: int) -> Distortion:
    """A smooth thin-plate-spline warp moving each point of a DISTORTION_GRID x DISTORTION_GRID control grid
    by up to MAX_CONTROL_SHIFT; its inverse is given at the `grid` x `grid` control points of the STN.

    The inverse is found by fixed-point iteration p <- p - (T(p) - c), which converges for these
    near-identity warps.
    """
    control = control_grid(DISTORTION_GRID)
    moved = control + rng.uniform(-MAX_CONTROL_SHIFT, MAX_CONTROL_SHIFT, control.shape)
    targets = control_grid(grid)
    inverse = targets.copy()
    for _ in range(_INVERSE_ITERATIONS):
        inverse -= tps_matrix(inverse, DISTORTION_GRID) @ moved - targets
    return Distortion(_pixel_tps(size, DISTORTION_GRID) @ moved, inverse)


@functools.lru_cache(maxsize=8)
def _pixel_tps(size: int, grid: int) -> np.ndarray:
    """tps_matrix of every pixel centre of a size x size image (the same for every distortion: computed once)."""
    return tps_matrix(pixel_centres(size, size), grid)


def distorter(transform: str, grid: int = 4) -> Callable[[np.random.Generator, int], Distortion]:
    """The random distortion of a non-affine `transform` (affine scenes come from contract.scenes)."""
    if transform == "projective":
        return random_projective
    if transform == "tps":
        return lambda rng, size: random_tps(rng, size, grid)
    raise ValueError(f"no random distortion for transform {transform!r}; use projective or tps")


def distort(image: np.ndarray, distortion: Distortion) -> np.ndarray:
    """The uint8 (S, S, 3) distorted image of a square uint8 scene."""
    size = image.shape[0]
    return np.clip(sample(image, distortion.source.reshape(size, size, 2)) + 0.5, 0, 255).astype(np.uint8)
