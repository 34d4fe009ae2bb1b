"""The HTTP/REST listener: an aiohttp server on the server's own event loop, serving the adapters' routes.

aiohttp was chosen over uvicorn + Starlette and a raw ASGI app (docs/PROTOCOLS.md,
docs/history/2026-11-27-http-server.md): it runs on an existing loop without taking over signals,
parses HTTP in C (llhttp), and its runner closes the listener and waits for in-flight handlers on
shutdown, which is the drain the gRPC side does. Errors leave as OIP JSON `{"error": message}` with
the HTTP status from the one table in serving.api.status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from serving.api.http_routes import Handler
from serving.api.status import codes_of
from serving.errors import ServingError

log = logging.getLogger(__name__)


@web.middleware
async def oip_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors -> their HTTP status; aiohttp's own (404 no route, 405, 413 too large) -> the same JSON."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return web.json_response({"error": error.text or error.reason}, status=error.status)
    except Exception as error:
        codes, message = codes_of(error)
        if codes.http == 500 and not isinstance(error, ServingError):
            log.error("HTTP %s %s failed", request.method, request.path, exc_info=error)
        return web.json_response({"error": message}, status=codes.http)


async def start_http(
    routes: Sequence[web.RouteDef], host: str, port: int, max_body_bytes: int, grace_seconds: float
) -> web.AppRunner:
    """Listen on host:port; OSError when the port is taken. Stop with `runner.cleanup()` (drains)."""
    app = web.Application(middlewares=[oip_errors], client_max_size=max_body_bytes)
    app.add_routes(routes)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=grace_seconds, reuse_port=False)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
