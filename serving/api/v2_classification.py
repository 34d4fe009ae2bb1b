"""Triton's classification extension: an output requested with parameter `classification` = k
comes back as BYTES strings "score:index:label" of its k highest values, best first.

As in Triton, scores are the output's own values (no softmax), printed like C++'s
std::to_string (six decimals), the label is the line `index` of the output's label file and is
left out (with its colon) when there is none, and a batching model gets k strings per batch item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.errors import InvalidArgument


def top_k_strings(name: str, values: np.ndarray, k: int, labels: Sequence[str], batched: bool) -> np.ndarray:
    """(B, ...) -> object array (B, min(k, C)) of bytes (or (min(k, C),) when not `batched`).

    C = elements per batch item, k >= 1 (the request decoder checks it before compute).
    Raises InvalidArgument for a non-numeric output.
    """
    if values.dtype.kind not in "biuf":
        raise InvalidArgument(f"output '{name}': classification needs a numeric output, it is {values.dtype}")
    rows = values.reshape(values.shape[0], -1) if batched else values.reshape(1, -1)
    count = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    strings = np.empty(order.shape, dtype=object)
    for row, (scores, best) in enumerate(zip(rows, order, strict=True)):
        for rank, index in enumerate(best):
            text = f"{float(scores[index]):f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            strings[row, rank] = text.encode()
    return strings if batched else strings[0]
