"""SIGTERM with HTTP requests in flight: they finish, the HTTP listener closes, the process exits 0."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.serving.conftest import start_server
from tests.serving.core_models import slow_graph, tensor_config, write_model
from tests.serving.test_server import SLOW_WIDTH, wait_for_one_queued


def _post(url: str, rows: int) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, SLOW_WIDTH],
                                   "data": [1.0] * (rows * SLOW_WIDTH)}]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def test_sigterm_lets_http_requests_in_flight_finish(tmp_path: Path) -> None:
    queue_of_one = "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
    write_model(tmp_path, "slow_one", slow_graph(SLOW_WIDTH), tensor_config(SLOW_WIDTH, 8, queue_of_one))
    server = start_server(tmp_path, "--grace-seconds", "60")
    url = f"http://{server.http_target}/v2/models/slow_one/infer"
    try:
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(_post, url, 4)
            queued = pool.submit(_post, url, 1)
            wait_for_one_queued(server, "slow_one")  # one request computes, the other waits
            server.process.send_signal(signal.SIGTERM)
            for future, rows in ((running, 4), (queued, 1)):
                status, answer = future.result(timeout=120)
                assert status == 200 and answer["outputs"][0]["shape"] == [rows, SLOW_WIDTH]
        assert server.process.wait(60) == 0
        with pytest.raises(urllib.error.URLError):  # the listener is gone
            _post(url, 1)
    finally:
        server.stop(signum=signal.SIGKILL)
