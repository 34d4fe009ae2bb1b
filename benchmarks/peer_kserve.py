"""The peer: KServe's Python model server running the same classify work (benchmark only).

Run in its own virtual environment (KServe pins its own protobuf): `python -m benchmarks.peer_kserve
MODEL_DIR --grpc-port P --http-port Q`. It serves the Open Inference Protocol over gRPC with the
same request ninefold's v2 endpoint takes: input `images` BYTES [N] (JPEGs), output `logits` as
BYTES [N, k] "score:index:label" strings (Triton's classification format), computed by
benchmarks.pipeline exactly as the raw baseline does. A second model, `<name>_tensors`, takes the
preprocessed FP32 `images` [N, 3, H, W] and returns FP32 `logits` [N, C]: tensors in, logits out, the
same protocol and work as ninefold's v2 endpoint on the same ONNX file.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse

from benchmarks.pipeline import ClassifyPipeline

TOP_K = 5


class _PipelineModel(kserve.Model):
    """A KServe model over benchmarks.pipeline for one model folder (loaded before serving)."""

    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self._model_dir = model_dir
        self._pipeline: ClassifyPipeline | None = None

    def load(self) -> bool:
        self._pipeline = ClassifyPipeline(self._model_dir)
        self.ready = True
        return self.ready


class PeerClassifier(_PipelineModel):
    """JPEGs in (a BYTES tensor, one element per image), top-5 strings out per image."""

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        assert self._pipeline is not None
        # as_numpy: over gRPC the BYTES tensor arrives in raw_input_contents (`.data` is empty then)
        jpegs = [bytes(item) for item in payload.inputs[0].as_numpy().reshape(-1)]
        if not jpegs:
            raise ValueError("the request carries no image")
        pipeline = self._pipeline
        answers = await asyncio.to_thread(pipeline, jpegs, TOP_K)  # keep ORT off the event loop
        strings = np.array(
            [
                [f"{s:.6f}:{i}:{label}" for label, i, s in zip(a.labels, a.indices, a.scores, strict=True)]
                for a in answers
            ],
            dtype=object,
        )
        output = InferOutput(name="logits", shape=list(strings.shape), datatype="BYTES")
        output.set_data_from_numpy(strings, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id)


class PeerTensorModel(_PipelineModel):
    """Preprocessed FP32 images in, FP32 logits out: the same ONNX Runtime session settings as raw."""

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        assert self._pipeline is not None
        images = np.ascontiguousarray(payload.inputs[0].as_numpy(), dtype=np.float32)
        logits = await asyncio.to_thread(self._pipeline.infer, images)
        output = InferOutput(name="logits", shape=list(logits.shape), datatype="FP32")
        output.set_data_from_numpy(logits)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    models: list[kserve.Model] = [
        PeerClassifier(args.model_dir.name, args.model_dir),
        PeerTensorModel(f"{args.model_dir.name}_tensors", args.model_dir),
    ]
    for model in models:
        model.load()
    kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1).start(models)


if __name__ == "__main__":
    main()
