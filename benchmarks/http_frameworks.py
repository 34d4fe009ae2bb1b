"""Which asyncio HTTP server should carry the OIP HTTP/REST endpoint: the candidates' overhead, measured.

Each candidate serves `POST /v2/models/{model}/infer` in its own process on uvloop with the very same
core (ModelManager, the v2 servicer, serving.api.http_infer's codec): only the HTTP layer differs.
The load is clients.bench's closed loop with binary tensors, c=1 and c=16, one candidate at a time.

    python -m benchmarks.http_frameworks MODEL_REPOSITORY MODEL [--size 64]

Candidates: aiohttp (what ninefold ships, serving.api.http_server), Starlette on uvicorn, and a raw
ASGI callable on uvicorn (uvicorn with httptools: the floor of any ASGI framework). uvicorn and
Starlette are not ninefold dependencies; install them into a scratch directory on PYTHONPATH
(`pip install --target DIR uvicorn starlette httptools`). The dated result is in docs/history/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from clients.bench import LoadPlan, measure_system
from clients.bench.targets import v2_http_tensor_target
from clients.server_process import free_ports
from contract.names import IMAGES
from serving.api.http_infer import HEADER_LENGTH, infer_request, infer_response
from serving.api.http_routes import routes
from serving.api.http_server import start_http
from serving.api.inference import InferenceServicer
from serving.api.shm import SharedMemoryRegistry
from serving.api.v2_infer import InputLimits
from serving.images import ImageLimits
from serving.model_control import ModelControl
from serving.models import ModelManager

CANDIDATES = ("aiohttp", "starlette", "asgi")
Answer = Callable[[str, bytes, str | None], Awaitable[tuple[bytes, int | None]]]


class _NoDeadline:
    def time_remaining(self) -> None:
        return None


async def _core(repository: Path) -> tuple[InferenceServicer, Answer]:
    models = ModelManager(repository)
    await models.load_all()
    control = ModelControl.create("none", "", repository)
    servicer = InferenceServicer(models, control, InputLimits(ImageLimits(), 64),
                                 SharedMemoryRegistry(64 << 20))

    async def answer(model: str, body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
        message, output_format = infer_request(model, "", body, header_length)
        return infer_response(await servicer.ModelInfer(message, _NoDeadline()), output_format)  # type: ignore[arg-type]

    return servicer, answer


async def _serve(candidate: str, repository: Path, port: int) -> None:
    servicer, answer = await _core(repository)
    if candidate == "aiohttp":
        await start_http(routes(servicer), "127.0.0.1", port, 64 << 20, 1.0)
        print("ready", flush=True)
        await asyncio.Event().wait()
    import uvicorn  # not a ninefold dependency (see the module docstring)

    app = _starlette(answer) if candidate == "starlette" else _asgi(answer)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", http="httptools", lifespan="off",
                            log_level="warning", access_log=False)
    print("ready", flush=True)
    await uvicorn.Server(config).serve()


def _headers(body: bytes, header_length: int | None) -> dict[str, str]:
    if header_length is None:
        return {"content-type": "application/json"}
    return {"content-type": "application/octet-stream", HEADER_LENGTH.lower(): str(header_length)}


def _starlette(answer: Answer) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        body, length = await answer(request.path_params["model"], await request.body(),
                                    request.headers.get(HEADER_LENGTH))
        return Response(body, headers=_headers(body, length))

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


def _asgi(answer: Answer) -> Any:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        model = scope["path"].split("/")[3]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body, length = await answer(model, b"".join(chunks), headers.get(HEADER_LENGTH.lower()))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(k.encode(), v.encode()) for k, v in _headers(body, length).items()]})
        await send({"type": "http.response.body", "body": body})

    return app


def _measure(candidate: str, repository: Path, model: str, size: int, plan: LoadPlan) -> list[dict]:
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.http_frameworks", "--serve", candidate,
                                str(repository), model, "--port", str(port)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
        time.sleep(0.5)
        images = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        points = asyncio.run(measure_system(f"127.0.0.1:{port}", v2_http_tensor_target(model, {IMAGES: images}),
                                            plan, system=candidate, model=model, server_pid=process.pid))
        return [point.as_dict() for point in points]
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path)
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=64, help="image side of the model's FP32 input")
    parser.add_argument("--serve", choices=CANDIDATES, help="internal: run one candidate server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.serve:
        uvloop.run(_serve(args.serve, args.repository, args.port))
        return 0
    plan = LoadPlan(concurrencies=(1, 16), duration_s=args.duration, warmup_s=1.0, repeats=args.repeats)
    results = {c: _measure(c, args.repository, args.model, args.size, plan) for c in CANDIDATES}
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
