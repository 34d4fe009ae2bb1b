"""Multi-crop classification against a single crop, on held-out scenes (AlexNet's / GoogLeNet's test-time crops).

    python -m benchmarks.multicrop --model-repository model_repository --scenes 400

One server (clients.server_process, loopback) on the repository; every ready classifier classifies the same
held-out scenes (the generator's test split of --seed, drawn at SCENE_SIDE, larger than any small model's
input, as a photo is larger than a model's input; --distort: rotated, scaled and shifted as the warp task's)
with crops=1, 5 and 10. Per model and crop count: top-1 accuracy, its change against 1 crop, and the
agreement of the top-1 label with 1 crop's: contract.multicrop's figures, which each small classifier's
export report also gives (there on scenes drawn at SCENE_SCALE times that model's own input size). Prints a
Markdown table; --out FILE also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clients.client import VisionClient
from clients.server_process import ServerProcess
from contract.multicrop import CROP_COUNTS, SCENE_SCALE, CropFigures, crop_figures
from contract.scenes import SHAPES, make_scenes

SCENE_SIDE = round(64 * SCENE_SCALE)  # the input of the small AlexNet and ZF Net (the others take 32), drawn larger
BATCH = 20  # images per request


@dataclass(frozen=True)
class Row:
    model: str
    figures: CropFigures


def top_labels(client: VisionClient, model: str, images: np.ndarray, crops: int) -> list[str]:
    labels: list[str] = []
    for start in range(0, len(images), BATCH):
        answer = client.classify(images[start : start + BATCH], model=model, top_k=1, crops=crops)
        labels += [result.predictions[0].label for result in answer.results]
    return labels


def measure(client: VisionClient, images: np.ndarray, truth: Sequence[str]) -> list[Row]:
    rows = []
    for info in client.list_models("classify"):
        if not info.ready:
            continue
        answers = {crops: top_labels(client, info.name, images, crops) for crops in CROP_COUNTS}
        rows += [Row(info.name, figures) for figures in crop_figures(truth, answers)]
    return rows


def table(rows: Sequence[Row]) -> str:
    header = "| model | crops | top-1 accuracy | change vs 1 crop | top-1 agreement with 1 crop |"
    lines = [header, "|---|---|---|---|---|"]
    lines += [
        f"| {r.model} | {f.crops} | {f.accuracy:.3f} | {f.accuracy_change:+.3f} | {f.agreement_with_one_crop:.3f} |"
        for r, f in ((row, row.figures) for row in rows)
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multicrop", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--scenes", type=int, default=400, help="held-out scenes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed; its test split is used (default: %(default)s)")
    parser.add_argument("--distort", action="store_true", help="harder scenes: rotated, scaled and shifted (warp's)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    scenes = make_scenes(args.scenes, SCENE_SIDE, args.seed, split="test", distort=args.distort)
    images = np.stack([scene.image for scene in scenes])
    truth = [SHAPES[scene.label] for scene in scenes]
    with ServerProcess.start(args.model_repository) as server, VisionClient(server.target, timeout=120) as client:
        rows = measure(client, images, truth)
        status = server.stop()
    kind = "distorted " if args.distort else ""
    print(f"{args.scenes} held-out {kind}scenes ({SCENE_SIDE} px, test split of seed {args.seed})")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps([{"model": row.model, **asdict(row.figures)} for row in rows], indent=2))
    return 0 if status == 0 and rows else 1


if __name__ == "__main__":
    sys.exit(main())
