"""The `explain_layers` parameter of a DeconvNet (explain) model: the layers it can project and their geometry.

Export writes it from the network's strides and kernels; the server reads it to check a request's layer and
to give each projection its receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYERS_PARAMETER = "explain_layers"


@dataclass(frozen=True)
class ExplainedLayer:
    """One layer of the `explain_layers` parameter: a map position (y, x) sees the input pixels
    [x * stride + offset, x * stride + offset + size) (same for y), clipped to the image."""

    name: str
    channels: int
    side: int
    stride: int
    offset: int
    size: int
