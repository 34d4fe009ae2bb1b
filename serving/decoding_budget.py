"""The server-wide budget for decoded images: how much memory image decoding holds at once.

A per-image pixel limit is no memory bound: a 2 KB request can carry 64 lossless WebPs of 39 Mpx,
about 160 MB each decoded. So before a request decodes, it reserves its peak (each of its parallel
pieces decodes one image at a time, and frees it before the next: the peak is the sum of its
largest images, serving.images.decoding_bytes) against `--max-decoding-bytes`, summed over every
request decoding at that moment. It decodes in fewer pieces when that fits and more does not, and
is refused with RESOURCE_EXHAUSTED when even one image does not fit (retry later, or send smaller
images). Reservations happen on the event loop only, so no lock is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from serving.errors import ResourceExhausted

_MB = 1024 * 1024


class DecodingBudget:
    """Bytes reserved by the requests decoding images right now (`in_use`), never more than a limit."""

    def __init__(self) -> None:
        self.in_use = 0

    @contextlib.contextmanager
    def reserve(self, costs: Sequence[int], workers: int, limit: int) -> Iterator[int]:
        """Hold the peak of decoding images costing `costs` bytes each (in request order) in at most
        `workers` parallel pieces; yields how many pieces to use. ResourceExhausted when one does not fit."""
        largest = sorted(costs, reverse=True)
        available = limit - self.in_use
        pieces = max(1, min(workers, len(costs)))
        while pieces > 1 and sum(largest[:pieces]) > available:
            pieces -= 1
        peak = sum(largest[:pieces])
        if peak > available:
            index = costs.index(largest[0])
            if largest[0] > limit:
                raise ResourceExhausted(
                    f"image {index}: decoding it takes about {largest[0] // _MB} MB, more than the server's "
                    f"budget of {limit // _MB} MB for decoding images; send a smaller image"
                )
            raise ResourceExhausted(
                f"the server is decoding {self.in_use // _MB} MB of images for other requests; image {index} "
                f"needs {largest[0] // _MB} MB more than its budget of {limit // _MB} MB allows now; retry later"
            )
        self.in_use += peak
        try:
            yield pieces
        finally:
            self.in_use -= peak


#: The one budget of this process (every transport's requests decode against it).
DECODING = DecodingBudget()
