"""Domain errors of the serving core: what went wrong, in words a caller can act on.

Every layer below the transport raises these (never grpc codes): the batcher, the repository,
the task layer. The transport maps them to status codes in ONE table
(`serving.api.status.CODES`: gRPC and HTTP). Messages must say what was wrong and what to change, and
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


class RejectedInput(InvalidArgument):
    """The backend failed on this request's values while the requests batched with it succeeded
    (found by running the failed batch again in halves, serving.batching)."""

    reason = "rejected_input"


FAILURE_REASONS: tuple[str, ...] = tuple(sorted({
    error.reason
    for error in (InvalidArgument, RejectedInput, NotFound, FailedPrecondition, Unavailable, ResourceExhausted,
                  DeadlineExceeded, Unauthenticated, Internal)
} | {CANCELLED}))
"""Every `reason` a request can fail with; /metrics shows each model's failure series for all of
them from load on (0 until it happens), so a healthy model's failure ratio reads 0, not "no data"."""

CLIENT_REASONS: frozenset[str] = frozenset({
    InvalidArgument.reason, RejectedInput.reason, ResourceExhausted.reason, NotFound.reason, FailedPrecondition.reason,
    Unauthenticated.reason, DeadlineExceeded.reason, CANCELLED,
})
"""Failures the caller causes or can fix (bad input, over a limit, unknown model, its own deadline or
cancellation); the rest (`backend`, `unavailable`) are server faults. The alerts and the dashboard
(k8s/monitoring) split failures by this set; tests/deploy checks that they name exactly it."""


def cancellation_reason(deadline: float | None) -> str:
    """The failure `reason` of a request whose handler was cancelled: gRPC cancels a call both when its
    client goes away and when its deadline (absolute time.monotonic() seconds) passes; they count apart."""
    if deadline is not None and time.monotonic() >= deadline:
        return DeadlineExceeded.reason
    return CANCELLED
