"""Pillow drawing for the demo's pictures: enlarge tiny images, draw boxes, write text under an
image, lay tiles out in a grid. Input images are (H, W, 3) uint8 arrays or PIL images; every
function returns a new RGB image and leaves its input untouched."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE_SIDE = 256
"""Display side of one image: the models see 32-64 px, which is too small to look at."""
FONT_SIZE = 15
LINE_GAP = 4
MARGIN = 6
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
GOOD = (0, 128, 0)
BAD = (200, 0, 0)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
BOX_COLORS = ((255, 60, 60), (60, 220, 60), (70, 140, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230))


def to_image(image: np.ndarray | bytes | Image.Image) -> Image.Image:
    """An (H, W, 3) uint8 array, encoded bytes (PNG...) or a PIL image, as an RGB PIL image."""
    if isinstance(image, bytes):
        return Image.open(io.BytesIO(image)).convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    return image.convert("RGB")


def enlarge(image: np.ndarray | bytes | Image.Image, side: int = TILE_SIDE) -> Image.Image:
    """Resize to `side` x `side` with nearest-neighbour, so every model pixel stays a visible block."""
    return to_image(image).resize((side, side), Image.Resampling.NEAREST)


def draw_boxes(
    image: Image.Image, boxes: Sequence[tuple[float, float, float, float]], labels: Sequence[str], scale: float
) -> Image.Image:
    """Boxes (x1, y1, x2, y2 in the original pixel grid) multiplied by `scale`, each with its label.

    Every box first, then every label, the first item's last: pass detections best first and the
    best one's label is never covered by another box or label."""
    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    font = _font()
    scaled = [tuple(v * scale for v in box) for box in boxes]
    colors = [BOX_COLORS[i % len(BOX_COLORS)] for i in range(len(scaled))]
    for (x1, y1, x2, y2), color in zip(scaled, colors, strict=True):
        draw.rectangle((x1, y1, x2, y2), outline=color, width=3)
    for (x1, y1, _, _), color, label in reversed(list(zip(scaled, colors, labels, strict=True))):
        left, top, right, bottom = font.getbbox(label)
        width, height = right - left + 2 * LINE_GAP, bottom - top + 2 * LINE_GAP
        label_x = min(x1, drawn.width - width)  # keep the label inside the picture
        label_y = max(y1 - height, 0)  # above the box, or inside it at the top edge
        draw.rectangle((label_x, label_y, label_x + width, label_y + height), fill=color)
        draw.text((label_x + LINE_GAP - left, label_y + LINE_GAP - top), label, fill=(0, 0, 0), font=font)
    return drawn


def with_caption(image: Image.Image, lines: Sequence[str], colors: Sequence[tuple[int, int, int]] = ()) -> Image.Image:
    """`image` above a white band holding `lines` (word-wrapped to the image width); line i in colors[i]."""
    font = _font()
    measure = ImageDraw.Draw(image)
    wrapped: list[tuple[str, tuple[int, int, int]]] = []
    for i, line in enumerate(lines):
        color = colors[i] if i < len(colors) else TEXT
        wrapped += [(part, color) for part in _wrap(line, measure, font, image.width - 2 * MARGIN)]
    line_height = FONT_SIZE + LINE_GAP
    band = 2 * MARGIN + line_height * len(wrapped)
    out = Image.new("RGB", (image.width, image.height + band), BACKGROUND)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for row, (text, color) in enumerate(wrapped):
        draw.text((MARGIN, image.height + MARGIN + row * line_height), text, fill=color, font=font)
    return out


def grid(tiles: Sequence[Image.Image], columns: int, title: str = "") -> Image.Image:
    """Tiles left to right, top to bottom, `columns` per row, under an optional title line."""
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_w = max(tile.width for tile in tiles)
    cell_h = max(tile.height for tile in tiles)
    top = FONT_SIZE + 3 * MARGIN if title else MARGIN
    out = Image.new("RGB", (columns * (cell_w + MARGIN) + MARGIN, top + rows * (cell_h + MARGIN)), BACKGROUND)
    if title:
        ImageDraw.Draw(out).text((MARGIN, MARGIN), title, fill=TEXT, font=_font())
    for i, tile in enumerate(tiles):
        row, column = divmod(i, columns)
        out.paste(tile, (MARGIN + column * (cell_w + MARGIN), top + row * (cell_h + MARGIN)))
    return out


def _wrap(text: str, draw: ImageDraw.ImageDraw, font: Font, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current or not lines else lines


def _font() -> Font:
    return ImageFont.load_default(size=FONT_SIZE)
