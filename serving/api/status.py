"""The one table from domain errors to gRPC status codes and HTTP statuses, applied to every RPC by an
interceptor and to every HTTP route by serving.api.http_server.

A handler raises serving.errors exceptions; the client gets the mapped code and the error's
message. Any other exception is logged with its traceback and answered INTERNAL with a generic
message: no stack traces, paths or internal state reach the client.

Bytes that are not the method's protobuf message never reach grpc's own error path (UNKNOWN plus
a traceback per request): the deserializer returns `Undecodable` instead, answered INVALID_ARGUMENT
with at most one log line per DECODE_LOG_INTERVAL_S. A request-streaming handler marked
`@per_message_errors` receives the Undecodable item and fails only that message; any other ends
its stream with INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import DecodeError

from serving import errors

log = logging.getLogger(__name__)

class Codes(NamedTuple):
    """How one domain error reads on each transport."""

    grpc: grpc.StatusCode
    http: int


CODES: dict[type[errors.ServingError], Codes] = {
    errors.InvalidArgument: Codes(grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.RejectedInput: Codes(grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.NotFound: Codes(grpc.StatusCode.NOT_FOUND, 404),
    errors.FailedPrecondition: Codes(grpc.StatusCode.FAILED_PRECONDITION, 400),
    errors.Unavailable: Codes(grpc.StatusCode.UNAVAILABLE, 503),
    errors.NotReady: Codes(grpc.StatusCode.UNAVAILABLE, 503),
    errors.ResourceExhausted: Codes(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    errors.DeadlineExceeded: Codes(grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    errors.Unauthenticated: Codes(grpc.StatusCode.UNAUTHENTICATED, 401),
    errors.Internal: Codes(grpc.StatusCode.INTERNAL, 500),
}
_INTERNAL = Codes(grpc.StatusCode.INTERNAL, 500)

INTERNAL_MESSAGE = "internal error; the server log has the details"
#: At most one log line per this many seconds about undecodable request messages (a fuzzer sends thousands).
DECODE_LOG_INTERVAL_S = 10.0
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Undecodable:
    """A request message whose bytes did not parse as the method's protobuf type."""

    error: str

    def invalid(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"the request message could not be decoded: {self.error}")


def per_message_errors(handler: F) -> F:
    """Mark a request-streaming handler that answers an Undecodable item itself (its stream goes on)."""
    handler.takes_undecodable = True  # type: ignore[attr-defined]
    return handler


class RateLimitedLog:
    """One warning per `interval_s` at most for a repeated kind of bad input; the rest are counted."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next = 0.0
        self._skipped = 0

    def warning(self, text: str) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        skipped = f" ({self._skipped} more like it since the last report)" if self._skipped else ""
        log.warning("%s%s", text, skipped)
        self._skipped = 0
        self._next = now + self._interval_s


_DECODE_LOG = RateLimitedLog(DECODE_LOG_INTERVAL_S)


def codes_of(error: BaseException) -> tuple[Codes, str]:
    """Both transports' codes and the client-facing message for any exception (domain errors by table,
    else INTERNAL / 500 with a generic message)."""
    for kind in type(error).__mro__:
        codes = CODES.get(kind)  # type: ignore[call-overload]
        if codes is not None:
            return codes, str(error)
    return _INTERNAL, INTERNAL_MESSAGE


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and client-facing message for any exception."""
    codes, message = codes_of(error)
    return codes.grpc, message


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> None:
    code, message = status_of(error)
    if code is grpc.StatusCode.INTERNAL and not isinstance(error, errors.ServingError):
        log.error("%s failed", method, exc_info=error)
    await context.abort(code, message)


Prepare = Callable[[Any], Any]
"""What a wrapped handler does to its request (or request iterator) before the servicer sees it."""


def _decoded(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise request.invalid()
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _as_is(request: Any) -> Any:
    return request


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering bytes it cannot parse with Undecodable instead of raising."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            _DECODE_LOG.warning(f"undecodable request message to {method} answered INVALID_ARGUMENT: {error}")
            return Undecodable(str(error))

    return deserialize


def _unary(behaviour: Callable[..., Awaitable[Any]], method: str, prepare: Prepare) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(prepare(request), context)
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, error, method)

    return handle


def _streaming(
    behaviour: Callable[..., AsyncIterator[Any]], method: str, prepare: Prepare
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(prepare(request), context):
                yield response
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, error, method)

    return handle


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler once (cached per method) so domain errors become status codes."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:  # unknown method: grpc answers UNIMPLEMENTED; cache nothing
                return handler
            wrapped = self._wrapped[method] = _wrap(handler, method)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    kwargs = {
        "request_deserializer": _tolerant(handler.request_deserializer, method),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method, _decoded), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _stream_or_unary(handler.unary_stream, method, _decoded), **kwargs
        )
    behaviour = handler.stream_unary or handler.stream_stream
    prepare = _as_is if getattr(behaviour, "takes_undecodable", False) else _decoded_stream
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(behaviour, method, prepare), **kwargs)
    return grpc.stream_stream_rpc_method_handler(_stream_or_unary(behaviour, method, prepare), **kwargs)


def _stream_or_unary(behaviour: Callable[..., Any], method: str, prepare: Prepare) -> Callable[..., Any]:
    """Streaming handlers are async generators or coroutines that call context.write()."""
    if inspect.isasyncgenfunction(behaviour):
        return _streaming(behaviour, method, prepare)
    return _unary(behaviour, method, prepare)
