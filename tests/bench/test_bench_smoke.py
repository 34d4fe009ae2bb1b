"""`ninefold bench` end to end: a 2-second run against a real server writes every file and field.

Speed is not asserted here (shared, noisy machine); `make bench` measures it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.raw import RawResult
from benchmarks.suite import ratios, transport_points
from clients.bench import LoadPlan
from clients.bench.report import Point
from clients.bench.stats import PointSummary, combine
from clients.server_process import ServerProcess, free_ports
from tests.serving.tiny_repository import SIZE, write_tiny_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repository = write_tiny_repository(tmp_path_factory.mktemp("bench_repository"))
    with ServerProcess.start(repository, log=tmp_path_factory.mktemp("logs") / "server.log") as running:
        yield running


def _bench(
    server: ServerProcess, out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "clients.cli", "bench", "--model", "tiny_classify",
        "--concurrency", "1,4", "--duration", "1", "--warmup", "0.2", "--repeats", "1",
        "--metrics-url", server.metrics_url, "--server-pid", str(server.process.pid), "--out", str(out), *args,
    ]
    child_env = {**os.environ, "NINEFOLD_SERVER": server.target, **(env or {})}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=child_env)


@pytest.mark.parametrize("protocol", ["ninefold", "v2"])
def test_bench_writes_results_with_every_field(server: ServerProcess, tmp_path: Path, protocol: str) -> None:
    finished = _bench(server, tmp_path, "--protocol", protocol)
    assert finished.returncode == 0, finished.stderr
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [p["load"] for p in results["points"]] == [1, 4]
    for point in results["points"]:
        median = point["median"]
        assert median["completed"] > 0 and median["errors"] == {}
        assert median["throughput"] > 0
        assert 0 < median["p50_ms"] <= median["p90_ms"] <= median["p99_ms"] <= median["max_ms"]
        assert point["avg_batch_size"] >= 1.0  # read from the server's /metrics
        assert point["server_cpu_us_per_request"] > 0  # read from /proc for the server's pid
    assert "| tiny_classify | ninefold |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "c=4" in finished.stderr  # progress on the terminal


def test_bench_stops_at_a_wrong_model_before_loading(server: ServerProcess, tmp_path: Path) -> None:
    finished = _bench(server, tmp_path, "--model", "no_such_model")  # the server comes from NINEFOLD_SERVER
    assert finished.returncode == 1
    (last,) = finished.stderr.splitlines()[-1:]
    assert last.startswith("ninefold bench: the first request failed, nothing measured: NOT_FOUND")
    assert "no_such_model" in last and f"`ninefold models --server {server.target}`" in last
    assert not (tmp_path / "bench.json").exists()


def test_bench_stops_at_a_wrong_address_saying_what_to_do(server: ServerProcess, tmp_path: Path) -> None:
    refusing_address = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    finished = _bench(server, tmp_path, env={"NINEFOLD_SERVER": refusing_address})
    assert finished.returncode == 1
    last = finished.stderr.splitlines()[-1]
    assert last.startswith("ninefold bench: the first request failed, nothing measured: UNAVAILABLE")
    assert f"is a server running at --server {refusing_address}?" in last and "ninefold serve" in last


def _point(system: str, load: int, throughput: float, p50: float, p99: float, cpu_us: float = 500.0) -> Point:
    summary = PointSummary(throughput, p50, p50, p99, p99, completed=10, errors={})
    return Point(system, "m", "closed", load, combine([summary]), None, cpu_us)


def test_summary_ratios_compare_systems_at_the_same_load() -> None:
    raw = RawResult(p50_ms_batch1=1.0, p99_ms_batch1=1.5, images_per_s={1: 800.0, 8: 1000.0},
                    cpu_us_per_image={1: 300.0, 8: 250.0})
    points = [
        _point("ninefold", 1, 700, 1.3, 2.0, 600.0), _point("ninefold", 16, 900, 17.0, 30.0, 500.0),
        _point("ninefold-no-batching", 16, 750, 20.0, 40.0), _point("kserve", 16, 600, 25.0, 60.0, 750.0),
    ]
    figures = ratios(raw, points)
    assert figures["saturation_vs_raw"] == pytest.approx(0.9)
    assert figures["overhead_ms_c1"] == pytest.approx(0.3)
    assert figures["batching_gain_c16"] == pytest.approx(1.2)
    assert figures["vs_peer_c16"] == pytest.approx(1.5)
    assert figures["p99_vs_peer_c16"] == pytest.approx(0.5)
    assert figures["cpu_vs_peer_c16"] == pytest.approx(1.5)
    assert figures["cpu_vs_raw"] == pytest.approx(0.5)


def test_transport_ratios_compare_http_and_shared_memory_with_v2_grpc() -> None:
    raw = RawResult(p50_ms_batch1=1.0, p99_ms_batch1=1.5, images_per_s={1: 800.0})
    points = [
        _point("ninefold-v2-tensors", 1, 500, 2.0, 3.0), _point("ninefold-v2-tensors", 16, 800, 20.0, 30.0, 400.0),
        _point("ninefold-v2-shm", 1, 600, 1.6, 2.0), _point("ninefold-v2-shm", 16, 1000, 16.0, 20.0, 320.0),
        _point("ninefold-http-tensors", 16, 600, 26.0, 40.0), _point("kserve-http-tensors", 16, 300, 50.0, 90.0),
    ]
    figures = ratios(raw, points)
    assert figures["shm_p50_gain_c1"] == pytest.approx(1.25)
    assert figures["shm_throughput_gain_c16"] == pytest.approx(1.25)
    assert figures["shm_cpu_gain_c16"] == pytest.approx(1.25)
    assert figures["http_tensors_vs_peer_c16"] == pytest.approx(2.0)
    assert figures["http_vs_grpc_tensors_c16"] == pytest.approx(0.75)


def test_transport_points_run_v2_grpc_http_and_shared_memory_without_errors(server: ServerProcess) -> None:
    images = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    plan = LoadPlan(concurrencies=(2,), duration_s=0.5, warmup_s=0.1, repeats=1)
    points = transport_points(server, "tiny_classify", {"images": images}, 4 * 4, plan)
    assert [p.system for p in points] == ["ninefold-v2-tensors", "ninefold-http-tensors", "ninefold-v2-shm"]
    for point in points:
        assert point.result.median.completed > 0 and point.result.median.errors == {}, point
    assert not list(Path("/dev/shm").glob(f"ninefold_bench_{os.getpid()}_*"))  # regions removed afterwards
