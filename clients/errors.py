"""The exceptions the client raises: one for failed calls, one for inputs it cannot send.

Both derive from `ClientError`, so a caller (the CLI) can catch everything the client reports
with one clause and print one line.
"""

from __future__ import annotations

import grpc
import grpc.aio


class ClientError(Exception):
    """Anything the ninefold client reports; `str()` is one line naming the problem."""


class InputError(ClientError, ValueError):
    """An argument the client will not send: unreadable image file, wrong array dtype or shape,
    out-of-range option. Raised before any network traffic."""


class VisionError(ClientError):
    """A call that failed: the gRPC status code and the server's (or gRPC's) message.

    `code` is a `grpc.StatusCode` (NOT_FOUND, INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNAVAILABLE...);
    `details` is the message, flattened to one line.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = " ".join(details.split())
        super().__init__(f"{code.name}: {self.details}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> VisionError:
        """Wrap what a sync stub (a `grpc.Call`) or an asyncio stub (`AioRpcError`) raised."""
        if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
            return cls(error.code() or grpc.StatusCode.UNKNOWN, error.details() or "no message from the server")
        return cls(grpc.StatusCode.UNKNOWN, str(error) or type(error).__name__)
