"""The server process: gRPC and HTTP transports over the core, health, reflection, metrics, draining.

Start-up order: bind and start gRPC first (so probes get NOT_SERVING instead of connection
refused while models load), load every model (warm-up included), then report SERVING.
Health: service "" is SERVING once the initial load finished and every model is ready (warm-up
included; --no-strict-readiness: at least one), see `ModelManager.serving`;
"ninefold.v1.Vision/<task>" is SERVING while that task's default model is ready; "liveness" is
SERVING while the process answers at all (the kubelet's liveness probe: a restart would not mend a
model that fails to load).
SIGTERM/SIGINT: every health service but "liveness" NOT_SERVING, new requests refused (UNAVAILABLE), in-flight
requests finish, and the process exits 0 within --grace-seconds. The OIP HTTP/REST routes the
adapters added are served on --http-port (0 = off) from the same loop, started after gRPC and
stopped with it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from contract.names import TASKS
from serving.api import ServingContext, inference, vision
from serving.api.http_server import start_http
from serving.api.shm import SharedMemoryRegistry
from serving.api.status import DomainErrorInterceptor
from serving.config import ServerConfig
from serving.cpus import cpu_budget
from serving.heap import start_trimming
from serving.metrics import start_metrics_server
from serving.models import ModelManager
from serving.placement import discover_gpus
from serving.repository import FileReader
from serving.tls import TlsSettingsError, server_credentials

log = logging.getLogger(__name__)

VISION_SERVICE = "ninefold.v1.Vision"
LIVENESS_SERVICE = "liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The transport adapters (serving.api), in registration order.
ADAPTERS = (vision, inference)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The server's channel options in one place."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def task_health_service(task: str) -> str:
    """Health service name of one task, e.g. "ninefold.v1.Vision/classify"."""
    return f"{VISION_SERVICE}/{task}"


class HealthReporter:
    """Keeps grpc.health.v1 in step with the model manager (called on the event loop)."""

    def __init__(self, servicer: health.aio.HealthServicer, models: ModelManager) -> None:
        self._servicer = servicer
        self._models = models
        self._tasks = sorted(set(TASKS))
        self._pending: asyncio.Task[None] | None = None

    def schedule_update(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listener form of `update` (model state changes call it on the loop)."""
        self._pending = loop.create_task(self.update())

    async def update(self) -> None:
        models = self._models
        overall = models.serving
        await self._servicer.set("", _SERVING if overall else _NOT_SERVING)
        for task in sorted(set(self._tasks) | set(models.tasks())):
            try:
                ready = models.loaded and models.default_for(task).ready
            except Exception:  # NotFound / NotReady / Unavailable: the task cannot answer now
                ready = False
            await self._servicer.set(task_health_service(task), _SERVING if ready else _NOT_SERVING)


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> int:
    """Run the server until `stop` is set or SIGTERM/SIGINT arrives; returns the exit code."""
    stop = stop or asyncio.Event()
    try:
        credentials = server_credentials(config)
        control = config.model_control()
    except (TlsSettingsError, ValueError) as error:
        log.error("%s", error)
        return 2
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    trimming = start_trimming()
    models = ModelManager(config.model_repository, config.backend_settings(), discover_gpus(),
                          strict_readiness=config.strict_readiness)
    models.startup_models = control.startup_models
    if control.enabled:  # loads on request: every file read must stay inside the repository
        models.files = FileReader.confined(config.model_repository)
    server = grpc.aio.server(
        interceptors=[DomainErrorInterceptor()], options=channel_options(config.max_message_bytes)
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reporter = HealthReporter(health_servicer, models)
    await health_servicer.set(LIVENESS_SERVICE, _SERVING)
    services = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    regions = SharedMemoryRegistry(config.max_message_bytes)
    context = ServingContext(models=models, config=config, control=control, regions=regions)
    for adapter in ADAPTERS:
        services += list(adapter.register(server, context))
    reflection.enable_server_reflection(services, server)

    address = f"{config.host}:{config.port}"
    try:
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
    except RuntimeError as error:
        log.error("cannot listen on %s (%s); is another server using the port?", address, error)
        return 2
    await reporter.update()
    await server.start()
    http = await _start_http(context)
    if http is None and config.http_port:
        await server.stop(None)
        return 2
    if config.metrics_port:
        start_metrics_server(config.host, config.metrics_port, models)
    metrics = f"metrics on :{config.metrics_port}" if config.metrics_port else "metrics off: --metrics-port 0"
    security = "plaintext" if credentials is None else "mutual TLS" if config.tls_client_ca else "TLS"
    log.info("listening on %s (%s; HTTP on :%s, %s); loading %s", address, security,
             config.http_port or "off", metrics,
             config.model_repository)
    log_cpu_budget(config.ort_threads)

    started = time.perf_counter()
    models.add_listener(lambda: reporter.schedule_update(loop))
    loading = asyncio.ensure_future(models.load_all())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        await reporter.update()
        ready = [m for m in models.models() if m.ready]
        elapsed = time.perf_counter() - started
        log.info("%d of %d model version(s) ready in %.2f s", len(ready), len(models.models()), elapsed)
        if not models.serving and models.strict_readiness and models.unready():
            log.warning("health \"\" stays NOT_SERVING: not ready: %s (every model must be; "
                        "--no-strict-readiness serves with some)", ", ".join(models.unready()))
    await stopping
    await drain(server, models, reporter, config.grace_seconds, http)
    loading.cancel()
    context.regions.close()
    if trimming is not None:
        trimming.set()
    return 0


def log_cpu_budget(ort_threads: int) -> None:
    """Say what the thread pools are sized by (the cgroup CPU limit in a container, not the node's cores)."""
    budget = cpu_budget()
    threads = f"{ort_threads} (--ort-threads)" if ort_threads > 0 else f"{budget.cpus} / CPU instances of the model"
    log.info("CPU budget %s; ONNX Runtime intra-op threads per CPU instance: %s", budget.describe(), threads)


async def _start_http(context: ServingContext) -> web.AppRunner | None:
    """The HTTP listener when --http-port is set (None when off or the port is taken, which is logged)."""
    config = context.config
    if not config.http_port:
        return None
    try:
        return await start_http(context.http_routes, config.host, config.http_port, config.max_message_bytes,
                                config.grace_seconds)
    except OSError as error:
        log.error("cannot listen on %s:%s for HTTP (%s); is another server using the port?",
                  config.host, config.http_port, error)
        return None


async def drain(
    server: grpc.aio.Server,
    models: ModelManager,
    reporter: HealthReporter,
    grace: float,
    http: web.AppRunner | None = None,
) -> None:
    """NOT_SERVING, refuse new requests, let in-flight ones finish, release the models, all within `grace`."""
    deadline = time.monotonic() + grace
    log.info("shutting down: refusing new requests, finishing in-flight ones (grace %.1f s)", grace)
    models.begin_drain()
    await reporter.update()
    await asyncio.gather(server.stop(grace), http.cleanup() if http else asyncio.sleep(0))
    try:
        await asyncio.wait_for(models.close(), timeout=max(0.1, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        log.warning("a batch was still computing when the grace period ended; exiting without it")
    log.info("stopped")
