"""Photo-like test images for the reference-agreement check of full exports (no downloads here).

Scenes drawn with Pillow at the sizes and aspect ratios photos come in (landscape, portrait, square,
small and larger than the model input, so every resize path runs): a sky gradient over a ground plane,
overlapping objects in varied colours, fine texture noise and a slight blur, encoded as JPEG (what
clients send). Deterministic from the seed.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: (width, height) of the photos, cycled: camera and phone aspect ratios, below and above 256 px.
SIZES = ((320, 240), (240, 320), (500, 375), (375, 500), (640, 427), (300, 300), (180, 240), (427, 640))
JPEG_QUALITY = 90


def photos(count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` (name, JPEG bytes) pairs, named ``photo00_320x240``..."""
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        buffer = io.BytesIO()
        _draw(width, height, rng).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        result.append((f"photo{index:02d}_{width}x{height}", buffer.getvalue()))
    return result


def _draw(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    horizon = int(height * rng.uniform(0.35, 0.7))
    sky_top, sky_bottom, ground = (rng.integers(0, 256, 3) for _ in range(3))
    ramp = np.linspace(0, 1, height)[:, None, None]
    canvas = (sky_top * (1 - ramp) + sky_bottom * ramp).repeat(width, axis=1)
    canvas[horizon:] = ground * rng.uniform(0.6, 1.0, (height - horizon, 1, 1))
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.uniform(0, width), rng.uniform(height * 0.2, height)
        w, h = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(x + w * np.cos(a), y + h * np.sin(a)) for a in rng.uniform(0, 2 * np.pi, 5)], fill=colour)
    noise = rng.normal(0, 8, (height, width, 3))
    textured = (np.asarray(picture, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8)
    return Image.fromarray(textured).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
