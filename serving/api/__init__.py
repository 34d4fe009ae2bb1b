"""gRPC transport adapters over the serving core.

Each adapter (serving.server.ADAPTERS imports them) is a module that exposes

    def register(server: grpc.aio.Server, context: ServingContext) -> Sequence[str]
        # add its servicers; return their full service names (for reflection)

Their settings are fields of the core's ServerConfig (serving.config), like every flag.
Servicers stay thin: request -> core (`context.models`) -> response. They raise
serving.errors exceptions; `serving.api.status` maps them to gRPC codes (and HTTP statuses) for every
adapter. An adapter that also speaks HTTP appends aiohttp routes to `context.http_routes`; the
server serves them on --http-port (serving.api.http_server).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from serving.api.shm import SharedMemoryRegistry
from serving.config import ServerConfig
from serving.model_control import ModelControl
from serving.models import ModelManager


@dataclass(frozen=True)
class ServingContext:
    """What an adapter gets: the model manager, the server configuration, its checked model-control
    settings, the server's one system shared memory registry, and the HTTP routes the adapters add."""

    models: ModelManager
    config: ServerConfig
    control: ModelControl
    regions: SharedMemoryRegistry
    http_routes: list[web.RouteDef] = field(default_factory=list)
