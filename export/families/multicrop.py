"""The small classifiers' multi-crop figure and its bar: top-1 accuracy with 1, 5 and 10 test-time crops on
held-out scenes, measured as the server answers Classify(crops=...) (contract.multicrop's crops and averaging,
contract.preprocessing's resize) over the exported graph in ONNX Runtime.

The scenes are drawn SCENE_SCALE larger than the model's input, as a photo is larger than a model's input,
so that a crop cuts a part of the scene rather than of a resized-up copy. The bar: 10 crops must clear the
family's own top-1 bar (measured 0.988-1.000 for the five small classifiers, docs/history/2026-11-27-multicrop.md),
so that a model, a crop geometry or an averaging that goes wrong stops the export.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from contract.multicrop import (
    CROP_COUNTS,
    CROP_FRACTION,
    SCENE_SCALE,
    averaged_log_probabilities,
    crop_figures,
    crop_source_size,
    crop_views,
    stacked_crops,
)
from contract.names import IMAGES, LOGITS
from contract.preprocessing import Preprocessing, preprocess
from contract.scenes import make_scenes, stack_images, stack_labels
from export.families.base import Bar, OnnxRunner

MULTICROP_SCENES = 250
GATED_CROPS = 10
BATCH = 256  # crops per ONNX Runtime run


def multicrop_top1(run: OnnxRunner, images: np.ndarray, preprocessing: Preprocessing) -> dict[int, np.ndarray]:
    """Crop count -> (N,) top-1 class of each uint8 (N, H, W, 3) image, as Classify(crops=count) answers."""
    size = preprocessing.size
    answers = {}
    for crops in CROP_COUNTS:
        source = preprocess(list(images), replace(preprocessing, size=crop_source_size(crops, size)))[0]
        inputs = stacked_crops(source, crop_views(crops, size))
        runs = [run("", {IMAGES: inputs[start : start + BATCH]})[LOGITS] for start in range(0, len(inputs), BATCH)]
        logits = np.concatenate(runs)
        answers[crops] = averaged_log_probabilities(logits, crops).argmax(axis=1)
    return answers


def multicrop_gate(
    run: OnnxRunner, preprocessing: Preprocessing, seed: int, split: str, threshold: float
) -> tuple[dict[str, object], Bar]:
    """The report's figures per crop count (accuracy, change and top-1 agreement against 1 crop) on
    MULTICROP_SCENES held-out scenes of `split`, and the bar GATED_CROPS crops' accuracy must clear."""
    side = round(SCENE_SCALE * max(preprocessing.size))
    scenes = make_scenes(MULTICROP_SCENES, side, seed, split=split)
    figures = crop_figures(stack_labels(scenes), multicrop_top1(run, stack_images(scenes), preprocessing))
    details: dict[str, object] = {
        "scenes": MULTICROP_SCENES,
        "scene_side": side,
        "split": split,
        "crop_fraction": CROP_FRACTION,
        "by_crops": [{name: round(value, 4) for name, value in asdict(figure).items()} for figure in figures],
    }
    gated = next(figure for figure in figures if figure.crops == GATED_CROPS)
    return details, Bar(f"top1_{GATED_CROPS}_crops", gated.accuracy, threshold)
