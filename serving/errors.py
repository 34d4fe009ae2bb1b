"""Domain errors of the serving core: what went wrong, in words a caller can act on.

Every layer below the transport raises these (never grpc codes): the batcher, the repository,
the task layer. The transport maps them to status codes in ONE table
(`serving.api.status.GRPC_CODES`). Messages must say what was wrong and what to change, and
must never contain stack traces, file system paths of the server or internal state.

`reason` is the label value of `nv_inference_request_failure{reason=...}`.
"""

from __future__ import annotations

import time

#: `reason` of a request whose caller went away before it finished.
CANCELLED = "cancelled"


class ServingError(Exception):
    """Base of every error a client may see. `str(error)` is the client-facing message."""

    reason = "other"


class InvalidArgument(ServingError):
    """The request is malformed: bad image bytes, wrong shape/dtype, out-of-range option."""

    reason = "invalid_argument"


class NotFound(ServingError):
    """Unknown model, version or task."""

    reason = "not_found"


class FailedPrecondition(ServingError):
    """The model exists but cannot answer this request (e.g. it serves another task)."""

    reason = "failed_precondition"


class Unavailable(ServingError):
    """Not ready yet, failed to load, unloading, or the server is draining. Retry elsewhere/later."""

    reason = "unavailable"


class ResourceExhausted(ServingError):
    """A limit was hit: queue full, too many images, image too large."""

    reason = "resource_exhausted"


class DeadlineExceeded(ServingError):
    """The request's deadline (or the model's queue timeout) passed before compute started."""

    reason = "deadline_exceeded"


class Unauthenticated(ServingError):
    """A protected operation (model control) without a valid token."""

    reason = "unauthenticated"


class Internal(ServingError):
    """A backend failed while computing. The message is generic; details go to the server log."""

    reason = "backend"


class NotReady(Unavailable):
    """The model exists but is not ready: still loading, failed to load, or unloading."""


def cancellation_reason(deadline: float | None) -> str:
    """The failure `reason` of a request whose handler was cancelled: gRPC cancels a call both when its
    client goes away and when its deadline (absolute time.monotonic() seconds) passes; they count apart."""
    if deadline is not None and time.monotonic() >= deadline:
        return DeadlineExceeded.reason
    return CANCELLED
