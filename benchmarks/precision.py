"""fp16 against fp32, one classifier exported both ways (``ninefold export --precision fp32,fp16``).

    python -m benchmarks.precision MODEL_REPOSITORY MODEL [--scenes 1000] [--seconds 3]

On the held-out scenes through the model's served preprocessing: the fp16 graph's worst logit deviation from
the fp32 graph's as a share of its row's largest logit (what the parity bound ``row_rtol`` limits), top-1 and
top-5 set agreement; the file sizes; ONNX Runtime CPU milliseconds per batch (1 thread, batch 1 and 16); and
how many Cast nodes the CPU execution provider inserts (an fp16 node without a CPU kernel runs in fp32 between
casts: then the CPU does not run fp16 arithmetic). The dated result is in docs/history/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from contract.model_config import parameters, read
from contract.names import FP16, IMAGES, PREPROCESSING_PARAMETER, precision_model_name
from contract.preprocessing import Preprocessing
from export.families.classifier import held_out_inputs
from export.onnx import open_session
from export.precision import agreement_bars
from export.repository import MODEL_FILE, VERSION


def inserted_casts(path: Path) -> int:
    """Cast nodes the CPU execution provider adds to the graph at `path` (graph optimisations off)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "placed.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        placed = onnx.load(options.optimized_model_filepath)
    casts = sum(node.op_type == "Cast" for node in placed.graph.node)
    return casts - sum(node.op_type == "Cast" for node in onnx.load(str(path)).graph.node)


def ms_per_batch(session: onnxruntime.InferenceSession, batch: np.ndarray, seconds: float) -> float:
    """Median milliseconds of one run on `batch` over about `seconds`."""
    session.run(None, {IMAGES: batch})
    durations = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(durations) < 3:
        began = time.perf_counter()
        session.run(None, {IMAGES: batch})
        durations.append(time.perf_counter() - began)
    return float(np.median(durations) * 1000)


def compare(repository: Path, model: str, scenes: int, seconds: float) -> dict[str, object]:
    paths = {precision: repository / name / VERSION / MODEL_FILE for precision, name in
             (("fp32", model), (FP16, precision_model_name(model, FP16)))}  # fmt: skip
    preprocessing = Preprocessing.from_json(parameters(read(repository / model))[PREPROCESSING_PARAMETER])
    inputs = held_out_inputs(scenes, preprocessing, seed=0)
    sessions = {precision: open_session(path) for precision, path in paths.items()}
    logits = {
        precision: np.concatenate([session.run(None, {IMAGES: inputs[i : i + 16]})[0] for i in range(0, scenes, 16)])
        for precision, session in sessions.items()
    }
    row_max = np.abs(logits["fp32"]).max(axis=1)
    deviation = np.abs(logits[FP16] - logits["fp32"]).max(axis=1)
    return {
        "model": model,
        "scenes": scenes,
        "max_abs_diff": float(deviation.max()),
        "max_diff_over_row_max": float((deviation / row_max).max()),
        **{bar.metric: bar.value for bar in agreement_bars(logits["fp32"], logits[FP16])},
        "bytes": {precision: path.stat().st_size for precision, path in paths.items()},
        "cpu_casts_inserted": {precision: inserted_casts(path) for precision, path in paths.items()},
        "cpu_ms_per_batch": {
            precision: {size: round(ms_per_batch(session, inputs[:size], seconds), 3) for size in (1, 16)}
            for precision, session in sessions.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("model", help="the fp32 model's name; <model>_fp16 must be beside it")
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per precision and batch size")
    args = parser.parse_args()
    print(json.dumps(compare(args.repository, args.model, args.scenes, args.seconds), indent=2))


if __name__ == "__main__":
    main()
