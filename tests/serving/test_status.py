"""The one table from domain errors to gRPC status codes and HTTP statuses."""

from __future__ import annotations

import grpc
import pytest

from serving import errors
from serving.api.status import CODES, INTERNAL_MESSAGE, codes_of, status_of


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no"), grpc.StatusCode.NOT_FOUND),
        (errors.FailedPrecondition("other task"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.NotReady("loading"), grpc.StatusCode.UNAVAILABLE),
        (errors.Unavailable("draining"), grpc.StatusCode.UNAVAILABLE),
        (errors.ResourceExhausted("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unauthenticated("token"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Internal("backend failed"), grpc.StatusCode.INTERNAL),
    ],
)
def test_domain_errors_keep_their_message_and_get_their_code(error: errors.ServingError, code: grpc.StatusCode) -> None:
    assert status_of(error) == (code, str(error))


def test_unexpected_errors_are_internal_without_details() -> None:
    code, message = status_of(KeyError("/srv/models/secret/path"))
    assert code == grpc.StatusCode.INTERNAL and message == INTERNAL_MESSAGE


def test_every_domain_error_has_a_code() -> None:
    kinds = {errors.InvalidArgument, errors.NotFound, errors.FailedPrecondition, errors.Unavailable, errors.NotReady,
             errors.ResourceExhausted, errors.DeadlineExceeded, errors.Unauthenticated, errors.Internal,
             errors.RejectedInput}
    assert set(CODES) == kinds
    assert {cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.ServingError)} \
        == kinds | {errors.ServingError}


@pytest.mark.parametrize(
    ("error", "http"),
    [(errors.InvalidArgument("bad"), 400), (errors.NotFound("no"), 404), (errors.NotReady("loading"), 503),
     (errors.ResourceExhausted("full"), 429), (errors.Unauthenticated("token"), 401), (KeyError("/x"), 500)],
)
def test_the_same_table_gives_http_statuses(error: Exception, http: int) -> None:
    codes, message = codes_of(error)
    assert codes.http == http and message == status_of(error)[1]
