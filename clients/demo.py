"""The main job (`make demo`): export the small families unless the repository is up to date,
start the server, send one request of every task with the client, print the answers, draw them
into `--out`, stop the server. Exit status 0 only when every step worked.

    python -m clients.demo --model-repository model_repository --out demo_output

Images come from the contract's scene generator (contract.scenes, numpy); the export itself runs
as a child process (`python -m export`), so this module never imports torch.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from clients import formatting, pictures
from clients.client import VisionClient
from clients.demo_repository import ensure_repository
from clients.errors import ClientError
from clients.results import Answer, ChannelProjection, ModelInfo
from clients.server_process import ServerProcess
from contract import warps
from contract.names import ALIGN, CAPTION, CLASSIFY, DETECT, EXPLAIN, GENERATE, WARP
from contract.scenes import SHAPES, Scene, make_scenes

SCENE_SIDE = 64
"""Scenes are drawn at 64 x 64 (the small models' largest input); the server resizes per model."""
IMAGES_PER_REQUEST = 4
CALL_TIMEOUT_S = 60.0
COLUMNS = 4

Step = Callable[[VisionClient, Path, int], None]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out
    try:
        ensure_repository(args.model_repository, force=args.force_export)
        out.mkdir(parents=True, exist_ok=True)
        print(f"starting the server on {args.model_repository} (log: {out / 'server.log'})", flush=True)
        with ServerProcess.start(args.model_repository, log=out / "server.log") as server:
            with VisionClient(server.target, timeout=CALL_TIMEOUT_S) as client:
                failed = [name for name, step in STEPS if not _run_step(name, step, client, out, args.seed)]
            status = server.stop()
    except (ClientError, OSError) as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 1
    if status != 0:
        failed.append(f"server exit status {status}")
    if failed:
        print(f"demo: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"demo: every task answered; pictures in {out}/")
    return 0


def classify(client: VisionClient, out: Path, seed: int) -> None:
    """Every ready classifier (images sent as raw uint8 arrays), on the whole image and with 10 crops
    (AlexNet's test-time augmentation: corners, centre and their flips, softmax averaged)."""
    scenes = make_scenes(IMAGES_PER_REQUEST, SCENE_SIDE, seed)
    classifiers = _ready_models(client, CLASSIFY)
    for model in classifiers:
        images = np.stack([scene.image for scene in scenes])
        answer = client.classify(images, model=model.name, top_k=3)
        ten_crop = client.classify(images, model=model.name, top_k=1, crops=10)
        tiles = []
        for i, (scene, result, averaged) in enumerate(zip(scenes, answer.results, ten_crop.results, strict=True)):
            truth = SHAPES[scene.label]
            print("  " + formatting.classification(f"scene {i} (truth {truth})", Answer(answer.model, (result,))).text)
            best, crops_best = result.predictions[0], averaged.predictions[0]
            verdict = pictures.GOOD if best.label == truth else pictures.BAD
            lines = [f"{best.label} {best.score:.2f}", f"10-crop: {crops_best.label} {crops_best.score:.2f}"]
            tiles.append(pictures.with_caption(pictures.enlarge(scene.image), [*lines, f"truth: {truth}"], [verdict]))
        _save(pictures.grid(tiles, COLUMNS, f"classify: {answer.model}"), out / f"classify_{model.name}.png")


def detect(client: VisionClient, out: Path, seed: int) -> None:
    """Scenes of three objects, sent PNG-encoded; boxes drawn on the enlarged images."""
    scenes = make_scenes(IMAGES_PER_REQUEST, SCENE_SIDE, seed, objects=3)
    answer = client.detect([_png(scene.image) for scene in scenes])
    tiles = []
    for i, (scene, result) in enumerate(zip(scenes, answer.results, strict=True)):
        truth = ", ".join(SHAPES[label] for label in scene.box_labels)
        print("  " + formatting.detections(f"scene {i} (truth {truth})", Answer(answer.model, (result,))).text)
        found = result.detections
        image = pictures.draw_boxes(
            pictures.enlarge(scene.image),
            [d.box for d in found],
            [f"{d.label} {d.score:.2f}" for d in found],
            scale=pictures.TILE_SIDE / SCENE_SIDE,
        )
        tiles.append(pictures.with_caption(image, [f"{len(found)} found", f"truth: {truth}"]))
    _save(pictures.grid(tiles, COLUMNS, f"detect: {answer.model}"), out / "detect.png")


def caption(client: VisionClient, out: Path, seed: int) -> None:
    scenes = make_scenes(IMAGES_PER_REQUEST, SCENE_SIDE, seed)
    answer = client.caption([scene.image for scene in scenes], beam_size=3)
    tiles = []
    for i, (scene, result) in enumerate(zip(scenes, answer.results, strict=True)):
        print("  " + formatting.caption(f"scene {i}", Answer(answer.model, (result,))).text)
        print(f'    truth: "{scene.caption}"')
        verdict = pictures.GOOD if result.text == scene.caption else pictures.BAD
        tiles.append(
            pictures.with_caption(pictures.enlarge(scene.image), [result.text, f"truth: {scene.caption}"], [verdict])
        )
    _save(pictures.grid(tiles, COLUMNS, f"caption (beam 3): {answer.model}"), out / "caption.png")


def generate(client: VisionClient, out: Path, seed: int) -> None:
    answer = client.generate(16, seed=seed)
    print(f"  {len(answer.results)} images from seed {seed} ({answer.model})")
    tiles = [pictures.enlarge(image.png, pictures.TILE_SIDE // 2) for image in answer.results]
    _save(pictures.grid(tiles, 8, f"generate (seed {seed}): {answer.model}"), out / "generate.png")


def warp(client: VisionClient, out: Path, seed: int) -> None:
    """Every ready warp model on scenes distorted by its own transform (affine, projective or thin-plate
    spline); each row: the input, the warped output, the undistorted scene. warp.png for the affine model,
    warp_<transform>.png for the others."""
    for model in _ready_models(client, "warp"):
        probe = client.warp(make_scenes(1, SCENE_SIDE, seed)[0].image, model=model.name)
        transform = probe.results[0].transform
        scenes = distorted_scenes(transform, seed)
        answer = client.warp([image for image, _ in scenes], model=model.name)
        path = out / ("warp.png" if transform == "affine" else f"warp_{transform}.png")
        tiles = []
        for i, ((image, scene), result) in enumerate(zip(scenes, answer.results, strict=True)):
            print("  " + formatting.warp(f"scene {i}", Answer(answer.model, (result,)), str(path)).text)
            truth = SHAPES[scene.label]
            verdict = pictures.GOOD if result.label == truth else pictures.BAD
            tiles += [
                pictures.with_caption(pictures.enlarge(image), [f"input ({transform} distortion)", f"truth: {truth}"]),
                pictures.with_caption(
                    pictures.enlarge(result.png), [f"warped: {result.label} {result.score:.2f}"], [verdict]
                ),
                pictures.with_caption(pictures.enlarge(scene.canonical), ["undistorted scene", ""]),
            ]
        _save(pictures.grid(tiles, 3, f"warp ({transform}): {answer.model}  (input | warped | undistorted)"), path)


def distorted_scenes(transform: str, seed: int) -> list[tuple[np.ndarray, Scene]]:
    """IMAGES_PER_REQUEST scenes with their images distorted by a random `transform` (the scene generator's own
    affine distortion, or contract.warps' projective and thin-plate-spline ones)."""
    if transform == "affine":
        return [(scene.image, scene) for scene in make_scenes(IMAGES_PER_REQUEST, SCENE_SIDE, seed, distort=True)]
    rng = np.random.default_rng(seed)
    draw = warps.distorter(transform)
    return [
        (warps.distort(scene.image, draw(rng, SCENE_SIDE)), scene)
        for scene in make_scenes(IMAGES_PER_REQUEST, SCENE_SIDE, seed)
    ]


def align(client: VisionClient, out: Path, seed: int) -> None:
    """The scenes' images and captions in one request: each image's captions ranked, and the paper's figure:
    the words of the image's own caption on the regions they align with (0 = the whole image)."""
    scenes = make_scenes(IMAGES_PER_REQUEST, SCENE_SIDE, seed)
    captions = [scene.caption for scene in scenes]
    answer = client.align([scene.image for scene in scenes], captions)
    tiles = []
    for i, (scene, result) in enumerate(zip(scenes, answer.images, strict=True)):
        print("  " + formatting.alignment(f"scene {i}", replace(answer, images=(result,))).text.replace("\n", "\n  "))
        own = next(match for match in result.sentences if match.sentence == i)
        by_region: dict[int, list[str]] = {}
        for word in own.words:
            by_region.setdefault(word.region, []).append(word.word)
        regions = sorted(by_region, key=lambda region: -len(by_region[region]))
        image = pictures.draw_boxes(
            pictures.enlarge(scene.image),
            [result.regions[region] for region in regions],
            [" ".join(by_region[region]) for region in regions],
            scale=pictures.TILE_SIDE / SCENE_SIDE,
        )
        best = result.sentences[0]
        verdict = pictures.GOOD if best.sentence == i else pictures.BAD
        tiles.append(pictures.with_caption(image, [f"best: {best.text}", f"truth: {scene.caption}"], [verdict]))
    _save(pictures.grid(tiles, COLUMNS, f"align (words on their regions): {answer.model}"), out / "align.png")


EXPLAIN_SCENES = 16
EXPLAIN_CHANNELS = 4
"""Per layer picture: the channels shown (rows) and the scenes shown per channel (pairs of columns)."""


def explain(client: VisionClient, out: Path, seed: int) -> None:
    """Zeiler & Fergus's figure 2, one picture per layer: the layer's channels that fire most over
    EXPLAIN_SCENES scenes and, for each, the scenes where it fires most, as DeconvNet projection and
    image patch side by side (both cropped to the activation's receptive field). Each scene brings the
    server's default top channels (9) of the layer; layers are asked by number until the last."""
    scenes = make_scenes(EXPLAIN_SCENES, SCENE_SIDE, seed)
    images = [scene.image for scene in scenes]
    last = client.explain(images[0], top_k=1).results[0].layer  # the default layer is the last
    layer, number = "", 0
    while layer != last:
        number += 1
        answer = client.explain(images, layer=number)
        layer = answer.results[0].layer
        fired: dict[int, list[tuple[float, int, ChannelProjection]]] = {}
        for index, result in enumerate(answer.results):
            for projection in result.channels:
                fired.setdefault(projection.channel, []).append((projection.activation, index, projection))
        strongest = sorted(fired, key=lambda channel: -max(item[0] for item in fired[channel]))[:EXPLAIN_CHANNELS]
        tiles = []
        for channel in strongest:
            best = sorted(fired[channel], key=lambda item: -item[0])[:EXPLAIN_CHANNELS]
            print(f"  {layer} channel {channel}: strongest {best[0][0]:.2f} on scene {best[0][1]}")
            for activation, index, projection in best:
                drawn = pictures.to_image(projection.png)
                scene = pictures.to_image(images[index]).resize(drawn.size)  # as the model saw it
                x1, y1, x2, y2 = (round(v) for v in projection.receptive_field)
                tiles += [
                    _patch(drawn, (x1, y1, x2, y2), f"ch {channel}: {activation:.2f}"),
                    _patch(scene, (x1, y1, x2, y2), f"scene {index}"),
                ]
        title = f"explain {layer}: {answer.model}  (DeconvNet projection | image patch; rows: channels)"
        _save(pictures.grid(tiles, 2 * EXPLAIN_CHANNELS, title), out / f"explain_{layer}.png")


EXPLAINED_SCENES = 4
EXPLAINED_CHANNELS = 3


def explain_by_class(client: VisionClient, out: Path, seed: int) -> None:
    """Explain by class: per scene (rows), the last layer's channels contributing most to the logit of the
    scene's own class, then of the next class, as DeconvNet projections: another class, other channels.
    Classes by index (the small models' labels are the scenes' shapes, in order)."""
    (model,) = [info for info in client.list_models(EXPLAIN) if info.is_default]
    classes = len(model.labels)
    scenes = make_scenes(EXPLAINED_SCENES, SCENE_SIDE, seed + 1)
    tiles = []
    for scene in scenes:
        tiles.append(pictures.with_caption(pictures.enlarge(scene.image), [f"scene: {SHAPES[scene.label]}"]))
        for wanted in (scene.label % classes, (scene.label + 1) % classes):
            result = client.explain(scene.image, explained_class=wanted).results[0]  # 9, or the layer's channels
            shown = result.channels[:EXPLAINED_CHANNELS]
            explained = result.explained_class
            name = str(wanted) if explained is None else f"{explained.label} (p={explained.score:.2f})"
            print(f"  {name}: channels {[c.channel for c in shown]}")
            tiles += [
                pictures.with_caption(pictures.enlarge(c.png), [f"{name}: ch {c.channel}", f"{c.contribution:+.2f}"])
                for c in shown
            ]
    title = f"explain by class, last layer: its own class | another class ({len(shown)} channels each)"
    _save(pictures.grid(tiles, 1 + 2 * len(shown), title), out / "explain_by_class.png")


def _patch(image: Image.Image, box: tuple[int, int, int, int], caption: str) -> Image.Image:
    """The receptive field `box` (x1, y1, x2, y2) of a model-sized image, enlarged, with a caption."""
    return pictures.with_caption(pictures.enlarge(image.crop(box), pictures.TILE_SIDE // 2), [caption])


def models(client: VisionClient, out: Path, seed: int) -> None:
    infos = client.list_models()
    print("\n".join("  " + line for line in formatting.models(infos).text.splitlines()))
    not_ready = [f"{info.name}: {info.state_reason}" for info in infos if not info.ready]
    if not_ready:
        raise ClientError(f"models not ready: {'; '.join(not_ready)}")


STEPS: tuple[tuple[str, Step], ...] = (
    ("models", models),
    (CLASSIFY, classify),
    (DETECT, detect),
    (CAPTION, caption),
    (GENERATE, generate),
    (WARP, warp),
    (ALIGN, align),
    (EXPLAIN, explain),
    (f"{EXPLAIN} by class", explain_by_class),
)


def _run_step(name: str, step: Step, client: VisionClient, out: Path, seed: int) -> bool:
    print(f"{name}:", flush=True)
    try:
        step(client, out, seed)
    except (ClientError, OSError) as error:
        print(f"  FAILED: {error}", flush=True)
        return False
    return True


def _ready_models(client: VisionClient, task: str) -> list[ModelInfo]:
    found = [info for info in client.list_models(task) if info.ready]
    if not found:
        raise ClientError(f"no ready model serves {task}")
    return found


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _save(image: Image.Image, path: Path) -> None:
    image.save(path)
    print(f"  wrote {path}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=Path(os.environ.get("NINEFOLD_MODEL_REPOSITORY", "model_repository")),
        help="exported into when missing or stale (env NINEFOLD_MODEL_REPOSITORY; default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="pictures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="scenes and generated images (default: %(default)s)")
    parser.add_argument("--force-export", action="store_true", help="export even if the repository is up to date")
    return parser


if __name__ == "__main__":
    sys.exit(main())
