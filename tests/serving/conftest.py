"""Start the real server as a subprocess on free loopback ports (reused by every serving-side test area).

    server = start_server(repository, "--grace-seconds", "5")   # waits until health "" is SERVING
    channel = grpc.insecure_channel(server.target)
    text = server.metrics()
    assert server.stop() == 0                                   # SIGTERM, wait, exit code

or the `server_factory` fixture, which stops whatever it started at teardown. Both go through the one
launcher the demo and the benchmarks use, clients.server_process.ServerProcess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clients.server_process import ServerProcess

STARTUP_TIMEOUT_S = 60.0


def start_server(
    repository: Path, *extra_args: str, env: dict[str, str] | None = None, wait_serving: bool = True
) -> ServerProcess:
    """`python -m serving` on `repository` with `extra_args`; waits until SERVING (or just listening).

    Raises ServerProcessError with the end of the server's log when it exits or does not get there in time.
    """
    return ServerProcess.start(
        repository, extra_args=extra_args, env=env, ready_timeout=STARTUP_TIMEOUT_S, wait_serving=wait_serving
    )


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """`server_factory(repository, *args)` starts a server; all of them are stopped at teardown."""
    started: list[ServerProcess] = []

    def factory(repository: Path, *extra_args: str, **kwargs: object) -> ServerProcess:
        server = start_server(repository, *extra_args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
