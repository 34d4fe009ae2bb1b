"""Full configs from checkpoints a user would bring, served as torchvision would answer them.

The test writes torchvision checkpoints (seeded, livened random weights: outputs depend on the input),
exports them with ``ninefold export --config full`` (which gates on its own reference agreement), serves
the repository with a real server and compares the served answers on photos with torchvision's own
``weights.transforms()`` (or the detector's own transform) + the PyTorch forward. A deliberately wrong
preprocessing fails the export's gate. ResNet-18 and GoogLeNet run at their full 224 (cheap enough);
VGG and AlexNet share the same code path (docs/EXPORT.md has their one-line commands).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import GoogLeNet_Weights, ResNet18_Weights
from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_320_FPN_Weights

from clients.client import VisionClient
from clients.server_process import ServerProcess
from export.__main__ import EXIT_FAILED, main
from export.data.photos import photos
from export.families.detection.agreement import compare_detections
from export.families.detection.mean_ap import ImageDetections
from export.families.faster_rcnn import TORCHVISION_BUILDERS
from tests.export.test_faster_rcnn import liven as liven_detector
from tests.export.test_weights import liven

PHOTOS = photos(10, seed=7)  # other photos than the export's own check (seed 0)
FINE_TUNED_CLASSES = 10


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    models = {
        "resnet": liven(torchvision.models.resnet18(weights=None)),
        "googlenet": liven(
            torchvision.models.googlenet(weights=None, num_classes=FINE_TUNED_CLASSES, init_weights=True)
        ),
        "faster_rcnn": liven_detector(
            TORCHVISION_BUILDERS["mobilenet_v3_large_320_fpn"](weights=None, weights_backbone=None, num_classes=91)
        ),
    }
    paths = {}
    for family, model in models.items():
        paths[family] = folder / f"{family}.pt"
        torch.save(model.state_dict(), paths[family])
    return paths


@pytest.fixture(scope="module")
def repository(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "repo"
    labels = out.parent / "labels.txt"
    labels.write_text("".join(f"kind {i}\n" for i in range(FINE_TUNED_CLASSES)))
    common = ["--config", "full", "--out", str(out)]
    assert main(["--families", "resnet", "--weights", f"resnet={checkpoints['resnet']}", *common]) == 0
    googlenet = ["--weights", f"googlenet={checkpoints['googlenet']}", "--labels", str(labels)]
    assert main(["--families", "googlenet", *googlenet, *common]) == 0
    detector = ["--weights", f"faster_rcnn={checkpoints['faster_rcnn']}", "--variant", "mobilenet_v3_large_320_fpn"]
    assert main(["--families", "faster_rcnn", *detector, *common]) == 0
    return out


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[VisionClient]:
    with ServerProcess.start(repository) as server:
        yield VisionClient(server.target)


def _reference_top5(model: torch.nn.Module, transform, data: bytes) -> list[int]:
    with torch.no_grad():
        logits = model.eval()(transform(Image.open(io.BytesIO(data)).convert("RGB"))[None])[0]
    return logits.argsort(descending=True)[:5].tolist()


@pytest.mark.parametrize(
    ("family", "model", "transform", "categories"),
    [
        ("resnet", "resnet_full", ResNet18_Weights.DEFAULT.transforms(), ResNet18_Weights.DEFAULT.meta["categories"]),
        # transform_input stays off (torchvision's default): the checkpoint was not made with it.
        ("googlenet", "googlenet_full", GoogLeNet_Weights.DEFAULT.transforms(), [f"kind {i}" for i in range(10)]),
    ],
)
def test_served_classes_agree_with_torchvision_transforms_and_pytorch(
    family: str, model: str, transform, categories: list[str], checkpoints: dict[str, Path], client: VisionClient
) -> None:
    network = {
        "resnet": torchvision.models.resnet18(weights=None),
        "googlenet": torchvision.models.googlenet(weights=None, num_classes=FINE_TUNED_CLASSES, aux_logits=True),
    }[family]
    network.load_state_dict(torch.load(checkpoints[family], weights_only=True))
    answer = client.classify([data for _, data in PHOTOS], model=model, top_k=5)
    same_sets = 0
    top_scores = []
    for (name, data), result in zip(PHOTOS, answer.results, strict=True):
        expected = _reference_top5(network, transform, data)
        served = [prediction.index for prediction in result.predictions]
        assert served[0] == expected[0], f"{name}: top-1 {served[0]} served, {expected[0]} by torchvision"
        assert [p.label for p in result.predictions] == [categories[i] for i in served]
        same_sets += set(served) == set(expected)
        top_scores.append(result.predictions[0].score)
    assert same_sets >= 0.95 * len(PHOTOS)
    assert max(top_scores) - min(top_scores) > 1e-3  # the livened weights answer each photo differently


@pytest.mark.parametrize("photo_indices", [(0,), (1, 2, 3)], ids=["one photo", "three photos in one request"])
def test_served_detections_agree_with_torchvision_in_the_photos_pixels(
    photo_indices: tuple[int, ...], checkpoints: dict[str, Path], client: VisionClient
) -> None:
    """torchvision pads a batch's images to its largest; so does the server with a request's images."""
    detector = TORCHVISION_BUILDERS["mobilenet_v3_large_320_fpn"](weights=None, weights_backbone=None, num_classes=91)
    detector.load_state_dict(torch.load(checkpoints["faster_rcnn"], weights_only=True))
    detector.eval()
    names = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT.meta["categories"]
    chosen = [PHOTOS[index] for index in photo_indices]
    pictures = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data in chosen]
    with torch.no_grad():
        outputs = detector([torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255 for p in pictures])
    threshold = detector.roi_heads.score_thresh  # torchvision's own (0.05); a request's 0 would mean 0.5
    answer = client.detect([data for _, data in chosen], model="faster_rcnn_full", score_threshold=threshold)
    for (name, _), pixels, output, result in zip(chosen, pictures, outputs, answer.results, strict=True):
        expected = ImageDetections(output["boxes"].numpy(), output["scores"].numpy(), output["labels"].numpy() - 1)
        served = ImageDetections(
            np.array([list(d.box) for d in result.detections], np.float32).reshape(-1, 4),
            np.array([d.score for d in result.detections], np.float32),
            np.array([d.index for d in result.detections], np.int64),
        )
        assert len(served.scores) > 0, name
        assert [d.label for d in result.detections] == [names[d.index + 1] for d in result.detections]
        agreement = compare_detections(
            [expected], [served], max_detections=detector.roi_heads.detections_per_img, score_threshold=threshold
        )
        total = agreement.paired + agreement.unpaired
        assert agreement.unexplained <= 0.05 * total, f"{name}: {agreement.describe()}"
        assert agreement.max_box_rel <= 1e-3, f"{name}: {agreement.describe()}"
        height, width = pixels.shape[:2]
        assert served.boxes[:, 2].max() <= width and served.boxes[:, 3].max() <= height


def test_a_wrong_preprocessing_fails_the_agreement_gate(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Squashing to a square, as the small configs do, is not what ImageNet weights were evaluated with."""
    out = tmp_path / "repo"
    arguments = ["--families", "resnet", "--config", "full", "--weights", f"resnet={checkpoints['resnet']}"]
    assert main([*arguments, "--preprocess", "mode=square", "--out", str(out)]) == EXIT_FAILED
    assert "reference agreement gate" in capsys.readouterr().err
    assert not out.exists()
