"""The classify work every system in the benchmark does: JPEG bytes in, top-k labels out.

Raw ONNX Runtime and the peer server call this; ninefold runs the same functions inside its task
layer (serving.images, serving.tasks.classify), so all three do the same decode, the same
preprocessing, the same ONNX Runtime session settings and the same top-k.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import model_config
from contract.names import PREPROCESSING_PARAMETER
from serving.backends import BackendSettings
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.images import EncodedImage, ImageLimits, Preprocessing, decode_resized, normalise, open_image
from serving.placement import CPU, Device
from serving.tasks.classify import softmax_top_k

_LIMITS = ImageLimits()


@dataclass(frozen=True)
class TopLabels:
    """One image's answer: labels and probabilities, best first."""

    labels: tuple[str, ...]
    indices: tuple[int, ...]
    scores: tuple[float, ...]


class ClassifyPipeline:
    """decode -> resize -> normalise (batch) -> ONNX Runtime -> softmax top-k, for one model folder."""

    def __init__(self, model_dir: Path, threads: int = 0, spin_wait: bool = False, device: Device = CPU) -> None:
        config = model_config.read(model_dir)
        settings = BackendSettings(intra_op_threads=threads, spin_wait=spin_wait)
        cores = threads or len(os.sched_getaffinity(0))
        self._backend = OnnxRuntimeBackend(model_dir / "1" / "model.onnx", device, settings, cores)
        pre = json.loads(config.parameters[PREPROCESSING_PARAMETER].string_value)
        self._pre = Preprocessing(tuple(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]))
        self._input = config.input[0].name
        self._output = config.output[0].name
        self.labels = tuple((model_dir / "labels.txt").read_text().split("\n")[:-1])

    def preprocess(self, jpegs: Sequence[bytes]) -> np.ndarray:
        """float32 (N, 3, H, W) ready for the session."""
        opened = [open_image(EncodedImage(data), i, _LIMITS) for i, data in enumerate(jpegs)]
        return normalise([decode_resized(image, self._pre.size) for image in opened], self._pre)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._backend.infer({self._input: batch})[self._output]

    def top_k(self, logits: np.ndarray, k: int) -> list[TopLabels]:
        best = softmax_top_k(logits, k)
        return [
            TopLabels(tuple(self.labels[i] for i in row), tuple(int(i) for i in row), tuple(float(p) for p in probs))
            for row, probs in zip(best.indices, best.probabilities, strict=True)
        ]

    def __call__(self, jpegs: Sequence[bytes], k: int = 5) -> list[TopLabels]:
        return self.top_k(self.infer(self.preprocess(jpegs)), k)
