"""Build the benchmark's models and repositories (torch side; `python -m benchmarks.models OUT`).

Three classifiers, random weights (speed does not depend on them):
- `tiny`: a five-layer CNN at 64x64, about a millisecond per image on two cores;
- `resnet18`: torchvision's ResNet-18 at 224x224, 1,000 classes;
- `pool224`: a 224x224 input averaged and fed to one linear layer: ResNet-class input with next to
  no compute, so what a transport costs (gRPC, HTTP, shared memory) is not hidden behind the model.
Each is exported once to ONNX and served from two repositories that differ only in batching:
`batching/` (dynamic_batching, as the export stage writes) and `unbatched/` (no dynamic_batching:
each request runs alone, Triton's default scheduler).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

from contract import model_config
from contract.model_config import CONFIG_FILE, LABELS_FILE
from contract.names import CLASSIFY, IMAGES, LOGITS, ONNX_PLATFORM, PREPROCESSING_PARAMETER, TASK_PARAMETER
from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_BATCH_SIZE = 32


def tiny_classifier(classes: int = 10) -> nn.Module:
    """Conv-BN-ReLU x4 with stride 2, global average pool, linear: (B, 3, 64, 64) -> (B, classes)."""
    layers: list[nn.Module] = []
    width_in = 3
    for width in (32, 64, 128, 256):
        layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        width_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, classes))


def pooled_classifier(classes: int = 10) -> nn.Module:
    """Global average pool + linear: (B, 3, H, W) -> (B, classes) in microseconds."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, classes))


MODELS = {
    "tiny": (tiny_classifier, 64, 10),
    "pool224": (pooled_classifier, 224, 10),
    "resnet18": (lambda classes: torchvision.models.resnet18(weights=None, num_classes=classes), 224, 1000),
}


def config_text(name: str, size: int, classes: int, batching: bool, kind: str = "KIND_CPU") -> str:
    """A Triton config.pbtxt for a task-level classifier, with or without a dynamic batcher.

    `kind` is the instance_group kind: KIND_CPU here, KIND_GPU for `make bench BENCH_ARGS=--device=cuda`.
    """
    preprocessing = json.dumps({"size": [size, size], "mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    config = mc.ModelConfig(name=name, platform=ONNX_PLATFORM, max_batch_size=MAX_BATCH_SIZE)
    model_config.add_inputs(config, [TensorSpec(IMAGES, (3, size, size))])
    model_config.add_outputs(config, [TensorSpec(LOGITS, (classes,), label_filename=LABELS_FILE)])
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.Value(kind), count=1)
    model_config.set_parameters(config, {TASK_PARAMETER: CLASSIFY, PREPROCESSING_PARAMETER: preprocessing})
    if batching:
        config.dynamic_batching.default_queue_policy.max_queue_size = 1024
    return model_config.render(config)


def export(name: str, out: Path) -> Path:
    """model.onnx (opset 17, dynamic batch) for `name` under out/onnx/<name>.onnx."""
    build, size, classes = MODELS[name]
    torch.manual_seed(0)
    model = build(classes).eval()
    path = out / "onnx" / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, 3, size, size)
    torch.onnx.export(
        model, (example,), str(path), input_names=[IMAGES], output_names=[LOGITS],
        dynamic_axes={IMAGES: {0: "batch"}, LOGITS: {0: "batch"}}, opset_version=17, dynamo=False,
    )
    return path


def write_repositories(out: Path, kind: str = "KIND_CPU") -> None:
    """out/batching/<model>/... and out/unbatched/<model>/..., sharing each ONNX file by hard link."""
    for name, (_, size, classes) in MODELS.items():
        onnx_path = export(name, out)
        for variant, batching in (("batching", True), ("unbatched", False)):
            folder = out / variant / name
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "1").mkdir(parents=True)
            (folder / CONFIG_FILE).write_text(config_text(name, size, classes, batching, kind))
            (folder / LABELS_FILE).write_text("".join(f"class_{i}\n" for i in range(classes)))
            (folder / "1" / "model.onnx").hardlink_to(onnx_path)


if __name__ == "__main__":
    torch.set_num_threads(2)
    write_repositories(Path(sys.argv[1]), *sys.argv[2:3])
