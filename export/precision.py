"""``--precision fp16``: a half-precision copy of a classifier's graph, its parity bound and its answer agreement.

The fp16 model keeps the served interface (FP32 inputs and outputs, the same tensors and preprocessing): the
graph casts its inputs to half, runs the half copy of the network and casts its outputs back, so the server
and clients need no change. It is written beside the fp32 model under ``contract.names.precision_model_name``
with the ``precision`` config.pbtxt parameter. Parity is against the fp32 PyTorch model (what the fp16 graph
approximates), with ``half_tolerance``; whether its answers are the fp32 model's is gated by ``agreement_bars``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.names import FP16, FP32, PRECISION_PARAMETER, PRECISIONS
from contract.ranking import top_columns
from export.families.base import Bar, ExportError, GraphSpec, Tolerance

UNIT_ROUNDOFF = 2.0**-11
"""fp16's relative rounding error (10 explicit mantissa bits: ~3.3 decimal digits)."""

TOP1_AGREEMENT = 0.99
"""Share of held-out scenes whose fp16 top-1 class is the fp32 model's. Measured 1.000 on trained small
classifiers (1000 scenes) and on ResNet-50 (100 scenes), 0.999-1.000 on seeded random small weights, whose
classes are near-tied (docs/history/2026-11-27-fp16-export.md): 1 flip in 100 is margin for near-ties on other
weights and machines, while a graph with other answers scores far below (tests/export/test_fp16.py). A model
whose every answer is a near-tie (VGG-16 with torchvision's near-silent random init: 0.990) sits on the bar."""
TOP5_AGREEMENT = 0.95
"""Share whose fp16 top-5 set is the fp32 model's: the 5th and 6th class are more often near-tied (0.998 measured
on random weights), so the bar sits lower, as the reference agreement's TOP5_SHARE does."""


class HalfPrecision(nn.Module):
    """``module`` in float16 between a cast of every input to half and of every output back to float."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.half_module = copy.deepcopy(module).half().eval()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.half_module(*(tensor.half() if tensor.is_floating_point() else tensor for tensor in inputs))
        if isinstance(outputs, torch.Tensor):
            return outputs.float()
        return tuple(output.float() for output in outputs)


def parse_precisions(text: str) -> tuple[str, ...]:
    """``fp16`` or ``fp32,fp16`` -> the precisions to write, each once, in PRECISIONS order."""
    requested = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(requested - set(PRECISIONS))
    if unknown or not requested:
        raise ExportError(f"--precision: expected a comma list of {', '.join(PRECISIONS)}, got {text!r}")
    return tuple(precision for precision in PRECISIONS if precision in requested)


def weighted_layers(module: nn.Module) -> int:
    """Convolution and linear layers: an upper bound on the depth over which rounding errors compound."""
    return sum(isinstance(layer, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d | nn.Linear) for layer in module.modules())


def half_tolerance(module: nn.Module) -> Tolerance:
    """The parity bound of an fp16 graph against the fp32 model, for outputs such as logits.

    Each weighted layer rounds its weights and its output to fp16 (2 x u, u = 2^-11 ~ 4.9e-4), and an error
    entering a layer leaves it scaled by about the layer's gain, so after L layers the worst case is about
    2 L u of the activations' scale: relative to the row's largest output (row_rtol), not to each element
    (a logit near zero is a sum of cancelling terms, each as large as the others). Small ResNet (20 layers):
    2e-2; ResNet-50 (54): 5.3e-2. atol u covers rows whose outputs are all near zero. It is a worst case
    (errors of random sign grow like sqrt(L)); what it lets through is the answer agreement's to judge.
    """
    return Tolerance(atol=UNIT_ROUNDOFF, row_rtol=2 * weighted_layers(module) * UNIT_ROUNDOFF)


def half_graph(graph: GraphSpec) -> GraphSpec:
    """`graph` as an fp16 model: the half module wrapped in casts, parity against the fp32 module with
    ``half_tolerance`` on every floating output, and the ``precision`` parameter."""
    bound = half_tolerance(graph.module)
    return dataclasses.replace(
        graph,
        module=HalfPrecision(graph.module),
        reference=graph.module if graph.reference is None else graph.reference,
        parameters={**graph.parameters, PRECISION_PARAMETER: FP16},
        tolerances={spec.name: bound for spec in graph.outputs if spec.dtype.kind == "f"},
    )


def precision_of(graph: GraphSpec) -> str:
    """The precision a graph is exported at (its ``precision`` parameter; fp32 without one)."""
    return graph.parameters.get(PRECISION_PARAMETER, FP32)


def agreement_bars(expected: np.ndarray, served: np.ndarray) -> tuple[Bar, Bar]:
    """Top-1 agreement and top-5 set agreement of `served` logits with `expected` (the fp32 model's), (N, C)."""
    k = min(5, expected.shape[1])
    reference, candidate = top_columns(expected, k), top_columns(served, k)
    top1 = float(np.mean(reference[:, 0] == candidate[:, 0]))
    sets = float(np.mean([set(a) == set(b) for a, b in zip(reference.tolist(), candidate.tolist(), strict=True)]))
    return Bar("fp16_top1_agreement", top1, TOP1_AGREEMENT), Bar("fp16_top5_agreement", sets, TOP5_AGREEMENT)


AGREEMENT = "half_precision_agreement"
"""The family method an fp16 export needs: ``(model, config, seed, run) -> tuple[Bar, ...]``, the answer agreement
of the fp16 graph (``run``) with the fp32 model (export.families.classifier). Families without it are refused."""


def refusal(families: Sequence[Any]) -> str | None:
    """Why ``--precision fp16`` cannot export `families` (the first one without AGREEMENT), or None."""
    for family in families:
        if not hasattr(family, AGREEMENT):
            return f"--precision fp16: {family.name} is not exported in fp16 (classifiers only; docs/EXPORT.md, 'fp16')"
    return None
