"""Generate: a seed (or explicit latent vectors) -> PNG images from a GAN generator.

Model contract (docs/MODEL_REPOSITORY.md): `z` FP32 [B, Z] standard normal -> `images` FP32
[B, 3, H, W] with values in the `output_range` parameter (tanh: [-1, 1]).
Same seed and count, same latents (NumPy's PCG64 `standard_normal`), same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import IMAGES, LATENT
from serving.errors import InvalidArgument
from serving.images import encode_png, from_range
from serving.tasks.common import TensorModel
from serving.tasks.offload import run_image_work


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    height: int
    width: int


def latents_from_seed(seed: int, count: int, latent_size: int) -> np.ndarray:
    """float32 (count, latent_size) standard normal, a pure function of (seed, count, latent_size)."""
    return np.random.default_rng(seed).standard_normal((count, latent_size), dtype=np.float32)


def latents_from_values(vectors: Sequence[Sequence[float]], latent_size: int) -> np.ndarray:
    """float32 (len(vectors), latent_size); InvalidArgument naming the vector of the wrong size."""
    for index, vector in enumerate(vectors):
        if len(vector) != latent_size:
            raise InvalidArgument(
                f"latent {index} has {len(vector)} values; this model takes exactly {latent_size}"
            )
        if not np.isfinite(vector).all():
            raise InvalidArgument(f"latent {index} contains NaN or infinite values")
    return np.asarray(vectors, dtype=np.float32).reshape(len(vectors), latent_size)


def png_images(batch: np.ndarray, output_range: tuple[float, float]) -> list[GeneratedImage]:
    """PNG-encode float32 (N, 3, H, W) in `output_range`."""
    pixels = from_range(batch, *output_range)
    height, width = pixels.shape[1:3]
    return [GeneratedImage(png=encode_png(image), height=height, width=width) for image in pixels]


@dataclass(frozen=True)
class Generator:
    """A generator model, its latent size Z and its output pixel range (low, high)."""

    model: TensorModel
    latent_size: int
    output_range: tuple[float, float]

    async def generate(self, latents: np.ndarray, deadline: float | None) -> list[GeneratedImage]:
        """One PNG per row of `latents` float32 (N, Z), in order."""
        outputs = await self.model.infer({LATENT: latents}, deadline)
        images = outputs[IMAGES]
        return await run_image_work(lambda: png_images(images, self.output_range), images[0, 0].size * len(images))
