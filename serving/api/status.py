"""The one table from domain errors to gRPC status codes and HTTP statuses, applied to every RPC by an
interceptor and to every HTTP route by serving.api.http_server.

A handler raises serving.errors exceptions; the client gets the mapped code and the error's
message. Any other exception is logged with its traceback and answered INTERNAL with a generic
message: no stack traces, paths or internal state reach the client.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc

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


def _unary(behaviour: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, error, method)

    return handle


def _streaming(behaviour: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
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
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, method), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_stream_or_unary(handler.unary_stream, method), **kwargs)
    return grpc.stream_stream_rpc_method_handler(_stream_or_unary(handler.stream_stream, method), **kwargs)


def _stream_or_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    """Streaming handlers are async generators or coroutines that call context.write()."""
    if inspect.isasyncgenfunction(behaviour):
        return _streaming(behaviour, method)
    return _unary(behaviour, method)
