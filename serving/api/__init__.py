"""gRPC transport adapters over the serving core.

Each adapter is a module listed in ADAPTERS that exposes

    def register(server: grpc.aio.Server, context: ServingContext) -> Sequence[str]
        # add its servicers; return their full service names (for reflection)
    def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None   # optional
        # its own flags, via serving.config.add_option; values land in context.config.extras

Servicers stay thin: request -> core (`context.models`) -> response. They raise
serving.errors exceptions; `serving.api.status` maps them to gRPC codes (and HTTP statuses) for every
adapter. An adapter that also speaks HTTP appends aiohttp routes to `context.http_routes`; the
server serves them on --http-port (serving.api.http_server).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from types import ModuleType

from aiohttp import web

from serving.api.shm import SharedMemoryRegistry
from serving.config import ServerConfig
from serving.models import ModelManager

log = logging.getLogger(__name__)

#: The transport adapters, in registration order.
ADAPTERS = ("serving.api.vision", "serving.api.inference")


@dataclass(frozen=True)
class ServingContext:
    """What an adapter gets: the model manager, the server configuration (with its own flags in extras), the
    server's one system shared memory registry, and the HTTP routes the adapters add."""

    models: ModelManager
    config: ServerConfig
    regions: SharedMemoryRegistry
    http_routes: list[web.RouteDef] = field(default_factory=list)


def available_adapters() -> list[ModuleType]:
    """The adapter modules that exist in this build (one still being written is skipped, with a log line)."""
    modules = []
    for name in ADAPTERS:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            log.warning("transport adapter %s is not part of this build; skipping it", name)
    return modules
