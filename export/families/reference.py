"""Reference agreement of a full classifier export: does checkpoint + served preprocessing + ONNX answer
what torchvision's own preprocessing + the PyTorch model answer, on photos?

Per photo (export.data.photos, JPEG): the reference decodes it with Pillow, applies torchvision's
``ImageClassification`` preset (the one ``weights.transforms()`` returns, with the resize / crop /
interpolation / mean / std the export serves) and runs the PyTorch model; the served path decodes the
same bytes, runs contract.preprocessing (the server's code) and the ONNX graph. Gate: the top-1 class
identical on every photo, the top-5 set identical on at least TOP5_SHARE of them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from contract.names import IMAGES, LOGITS
from contract.preprocessing import Preprocessing, preprocess
from contract.ranking import top_columns
from export.data.photos import photos
from export.families.base import OnnxRunner, ParityCheck

PHOTOS = 20
TOP5_SHARE = 0.95
PREFIX = "reference/"


def imagenet_preprocessing(transforms: ImageClassification) -> Preprocessing:
    """torchvision's classification preset as served preprocessing: shorter side, centre crop."""
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return Preprocessing(
        size=(crop, crop),
        mean=tuple(transforms.mean),  # type: ignore[arg-type]
        std=tuple(transforms.std),  # type: ignore[arg-type]
        mode="shorter_side",
        resize=resize,
        interpolation=transforms.interpolation.value,
        antialias=bool(transforms.antialias),
    )


def reference_transform(preprocessing: Preprocessing) -> ImageClassification:
    """torchvision's preset with the served sizes, interpolation and normalisation. The mode, channel order
    and value range are not the preset's to change: serving another one than the checkpoint's is an error
    this check exists to catch."""
    return ImageClassification(
        crop_size=preprocessing.size[0],
        resize_size=preprocessing.resize or preprocessing.size[0],
        mean=preprocessing.mean,
        std=preprocessing.std,
        interpolation=InterpolationMode(preprocessing.interpolation),
        antialias=preprocessing.antialias,
    )


@torch.no_grad()
def classifier_agreement(
    model: nn.Module, preprocessing: Preprocessing, run: OnnxRunner, seed: int, count: int = PHOTOS
) -> tuple[ParityCheck, ...]:
    """One check per photo (passed: same top-1; max_abs_diff: worst logit difference; detail: the top-5
    overlap), then the top-5 share over all photos (passed: >= TOP5_SHARE)."""
    transform = reference_transform(preprocessing)
    checks = []
    same_sets = 0
    worst = 0.0
    pictures = photos(count, seed)
    for name, data in pictures:
        decoded = Image.open(io.BytesIO(data)).convert("RGB")
        expected = model.eval()(transform(decoded)[None]).numpy()[0]
        served_input, _ = preprocess([np.asarray(decoded)], preprocessing)
        served = run("", {IMAGES: served_input})[LOGITS][0]
        reference_top, served_top = _top5(expected), _top5(served)
        difference = float(np.abs(expected - served).max())
        worst = max(worst, difference)
        same_sets += set(reference_top) == set(served_top)
        overlap = len(set(reference_top) & set(served_top))
        checks.append(
            ParityCheck(
                name=PREFIX + name,
                max_abs_diff=difference,
                passed=reference_top[0] == served_top[0],
                detail=f"top-1 {reference_top[0]} (reference) vs {served_top[0]} (served); "
                f"top-5 overlap {overlap}/{len(reference_top)}",
            )
        )
    share = same_sets / len(pictures)
    checks.append(
        ParityCheck(
            name=PREFIX + "top5_sets",
            max_abs_diff=worst,
            passed=share >= TOP5_SHARE,
            detail=f"identical top-5 sets on {same_sets}/{len(pictures)} photos ({share:.0%}, bar {TOP5_SHARE:.0%})",
        )
    )
    return tuple(checks)


def _top5(logits: np.ndarray) -> Sequence[int]:
    """The five largest logits' classes of one row, best first (ties: lower index first)."""
    return [int(index) for index in top_columns(logits[None], min(5, len(logits)))[0]]
