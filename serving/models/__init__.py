"""The serving core's front door: which models exist, which are ready, and how to run one.

Transports (serving.api.vision, serving.api.inference) only ever talk to this package:

    model = manager.get("resnet_small")          # or manager.default_for("classify")
    with model.request(deadline):                # counts the request: success or failure, duration
        outputs = await model.infer({"images": batch}, deadline=deadline)

- served (`ServedModel`): one loaded model version: its validated config, signature, labels, state,
  statistics, `request` (the one place a request is counted) and `infer` (validates the tensors,
  awaits the model's dynamic batcher).
- registry (`ModelManager`): every version by name, load/reload/unload/drain, per-model state.
- loader: one version from disk to READY (placement, one backend per instance, signature check,
  warm-up inference of zeros on every instance).
"""

from serving.models.registry import ModelManager, RepositoryEntry
from serving.models.served import ModelState, ServedModel

__all__ = ["ModelManager", "ModelState", "RepositoryEntry", "ServedModel"]
