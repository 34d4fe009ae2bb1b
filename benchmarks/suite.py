"""`make bench`: the same classify work (JPEG in, top-5 labels out) on the same ONNX files, measured
side by side in one run:

1. raw: ClassifyPipeline in this process, batch 1 and the best batch size (the limit);
2. ninefold with dynamic batching, and with batching off (task API, Classify);
3. the peer: KServe's Python model server with the same pipeline (Open Inference Protocol gRPC);
4. the same FP32 tensors over v2 gRPC, over OIP HTTP/REST (binary tensors; ninefold and KServe) and
   over v2 gRPC with system shared memory (ninefold): what each transport costs.

Writes bench_results/summary.json (ratios per model + every point + machine, versions, date),
results.md and results.png. See docs/PERFORMANCE.md for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from benchmarks.peer_env import peer_python
from benchmarks.pipeline import ClassifyPipeline
from benchmarks.raw import RawResult, measure_raw
from benchmarks.shm_path import shared_memory_target
from clients.bench import LoadPlan, measure_system
from clients.bench.report import Point, write_results
from clients.bench.targets import (
    CLASSIFY_METHOD,
    HttpTarget,
    Target,
    classify_target,
    v2_http_tensor_target,
    v2_image_target,
    v2_tensor_target,
)
from clients.server_process import ServerProcess, free_ports
from clients.v2 import response_arrays
from contract.names import IMAGES, LOGITS
from contract.scenes import make_scenes
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc
from protos.ninefold.v1 import vision_pb2
from serving.placement import CPU, Device, discover_gpus

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"tiny": 64, "pool224": 224, "resnet18": 224}
RAW_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Settings:
    out: Path
    cache: Path
    plan: LoadPlan
    models: tuple[str, ...]
    peer: bool
    repository: Path | None
    device: str


def scene_jpeg(size: int) -> bytes:
    """A synthetic scene from the contract's generator, as the JPEG every system receives."""
    buffer = io.BytesIO()
    Image.fromarray(make_scenes(1, size, seed=7)[0].image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build_models(cache: Path, device: str) -> Path:
    """Export the benchmark models (torch runs in a child process; this one stays torch-free)."""
    work = cache / f"models-{device}"
    if not all((work / "unbatched" / name / "1" / "model.onnx").exists() for name in MODELS):
        kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
        subprocess.run([sys.executable, "-m", "benchmarks.models", str(work), kind], check=True, cwd=ROOT)
    return work


def pipeline_device(device: str) -> Device:
    """The raw baseline's device: the first GPU for `cuda` (fails clearly without one), else the CPU."""
    if device == "cpu":
        return CPU
    gpus = discover_gpus()
    if not gpus:
        raise SystemExit("bench: --device cuda but no GPU is visible (NVML found none)")
    return Device(gpus[0])


class PeerProcess:
    """KServe's model server in its own venv, on free loopback ports, stopped with SIGTERM."""

    def __init__(self, python: Path, model_dir: Path, log: Path) -> None:
        grpc_port, http_port = free_ports(2)
        self.target = f"127.0.0.1:{grpc_port}"
        self.http_target = f"127.0.0.1:{http_port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("wb") as sink:
            self._process = subprocess.Popen(
                [str(python), "-m", "benchmarks.peer_kserve", str(model_dir),
                 "--grpc-port", str(grpc_port), "--http-port", str(http_port)],
                cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            )
        self._wait_ready(model_dir.name, log)

    @property
    def pid(self) -> int:
        return self._process.pid

    def _wait_ready(self, model: str, log: Path, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the peer server exited; see {log}")
                try:
                    if stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=1.0).ready:
                        return
                except grpc.RpcError:
                    time.sleep(0.3)
        raise RuntimeError(f"the peer server was not ready within {timeout_s:g} s; see {log}")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()


def first_label(method: str, response: bytes) -> str:
    """The top-1 label of the first image in a serialised Classify or v2 classification response."""
    if method == CLASSIFY_METHOD:
        return vision_pb2.ClassifyResponse.FromString(response).results[0].predictions[0].label
    answer = v2.ModelInferResponse.FromString(response)
    if answer.raw_output_contents:
        entry = response_arrays(answer)[answer.outputs[0].name].reshape(-1)[0]
    else:
        entry = answer.outputs[0].contents.bytes_contents[0]
    return bytes(entry).decode().split(":", 2)[2]  # Triton's "score:index:label"


def check_answer(address: str, target: Target, expected: str, system: str) -> None:
    """One request before timing: the system must give the raw pipeline's top-1 label, so a system
    that answers fast but wrong (or empty) cannot win the benchmark."""
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        response = channel.unary_unary(target.method)(target.payload, timeout=120)
    try:
        label = first_label(target.method, response)
    except (IndexError, ValueError) as error:
        raise RuntimeError(f"{system} answered no classification ({error}); see its log") from None
    if label != expected:
        raise RuntimeError(f"{system} answered '{label}', the raw pipeline '{expected}': not the same work")


def run_model(model: str, models_dir: Path, settings: Settings, peer: Path | None) -> tuple[RawResult, list[Point]]:
    """Raw, ninefold (batching on, off) and the peer on one model; one system running at a time."""
    size = MODELS[model]
    jpeg = scene_jpeg(size)
    print(f"bench: {model} raw ONNX Runtime", file=sys.stderr, flush=True)
    pipeline = ClassifyPipeline(models_dir / "batching" / model, device=pipeline_device(settings.device))
    seconds = max(1.0, settings.plan.duration_s / 2)
    raw = measure_raw(pipeline, jpeg, RAW_BATCH_SIZES, seconds)
    expected = pipeline([jpeg], k=1)[0].labels[0]
    tensors = {IMAGES: pipeline.preprocess([jpeg])}  # the v2 tensors-in / logits-out comparison
    logits_bytes = pipeline.infer(tensors[IMAGES]).nbytes
    del pipeline
    print(f"  raw: batch 1 p50 {raw.p50_ms_batch1:.2f} ms; best {raw.best_images_per_s:.0f} img/s at batch "
          f"{raw.best_batch_size}", file=sys.stderr, flush=True)
    points: list[Point] = []
    logs = settings.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for system, repository in (("ninefold", "batching"), ("ninefold-no-batching", "unbatched")):
        with ServerProcess.start(models_dir / repository, log=logs / f"{system}-{model}.log") as server:
            check_answer(server.target, classify_target(model, jpeg), expected, system)
            points += asyncio.run(measure_system(
                server.target, classify_target(model, jpeg), settings.plan,
                system=system, model=model, metrics_url=server.metrics_url, server_pid=server.process.pid,
            ))
            if repository == "batching":
                points += transport_points(server, model, tensors, logits_bytes, settings.plan)
    if peer is not None:
        process = PeerProcess(peer, models_dir / "batching" / model, logs / f"kserve-{model}.log")
        try:
            peer_target = v2_image_target(model, IMAGES, jpeg, LOGITS)
            check_answer(process.target, peer_target, expected, "kserve")
            points += asyncio.run(measure_system(
                process.target, peer_target, settings.plan,
                system="kserve", model=model, server_pid=process.pid,
            ))
            points += asyncio.run(measure_system(
                process.target, v2_tensor_target(f"{model}_tensors", tensors), settings.plan,
                system="kserve-v2-tensors", model=model, server_pid=process.pid,
            ))
            points += asyncio.run(measure_system(
                process.http_target, v2_http_tensor_target(f"{model}_tensors", tensors), settings.plan,
                system="kserve-http-tensors", model=model, server_pid=process.pid,
            ))
        finally:
            process.stop()
    return raw, points


def transport_points(
    server: ServerProcess, model: str, tensors: dict[str, np.ndarray], logits_bytes: int, plan: LoadPlan
) -> list[Point]:
    """The same FP32 tensors in, logits out, over v2 gRPC, OIP HTTP (binary tensors) and v2 gRPC with
    both tensors in system shared memory."""
    def measure(address: str, target: Target | HttpTarget, system: str) -> list[Point]:
        return asyncio.run(measure_system(address, target, plan, system=system, model=model,
                                          metrics_url=server.metrics_url, server_pid=server.process.pid))

    points = measure(server.target, v2_tensor_target(model, tensors), "ninefold-v2-tensors")
    points += measure(server.http_target, v2_http_tensor_target(model, tensors), "ninefold-http-tensors")
    with shared_memory_target(server.target, model, tensors, {LOGITS: logits_bytes}) as target:
        points += measure(server.target, target, "ninefold-v2-shm")
    return points


def resident_mib(pid: int) -> float:
    """The process's resident set size (VmRSS) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure_startup(repository: Path, logs: Path) -> dict[str, float | int]:
    """Seconds from process start to health SERVING (every model loaded and warmed up), and memory.

    The repository is the nine small families (`make export`'s), exported first when stale.
    """
    from clients.demo_repository import ensure_repository

    ensure_repository(repository)
    began = time.monotonic()
    with ServerProcess.start(repository, log=logs / "ninefold-startup.log") as server:
        ready_s = time.monotonic() - began
        rss = resident_mib(server.process.pid)
    models = sum(1 for config in repository.glob("*/config.pbtxt"))
    print(f"bench: {models} models ready in {ready_s:.2f} s, resident {rss:.0f} MiB", file=sys.stderr, flush=True)
    return {"models": models, "ready_seconds": round(ready_s, 2), "resident_mib": round(rss, 1)}


def _at(points: list[Point], system: str, concurrency: int) -> Point | None:
    return next((p for p in points if p.system == system and p.mode == "closed" and p.load == concurrency), None)


def _median(point: Point | None, figure: str) -> float | None:
    return None if point is None else float(getattr(point.result.median, figure))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _cpu(point: Point | None) -> float | None:
    return None if point is None else point.server_cpu_us


def ratios(raw: RawResult, points: list[Point]) -> dict[str, float | None]:
    """The figures the performance issue asks for (None where a system was not measured)."""
    ours = [p for p in points if p.system == "ninefold"]
    best = max((p.result.median.throughput for p in ours), default=float("nan"))
    c1, c16 = _at(points, "ninefold", 1), _at(points, "ninefold", 16)
    off16, peer16 = _at(points, "ninefold-no-batching", 16), _at(points, "kserve", 16)
    v2_16, peer_v2_16 = _at(points, "ninefold-v2-tensors", 16), _at(points, "kserve-v2-tensors", 16)
    http16, peer_http16 = _at(points, "ninefold-http-tensors", 16), _at(points, "kserve-http-tensors", 16)
    v2_1, shm1, shm16 = _at(points, "ninefold-v2-tensors", 1), _at(points, "ninefold-v2-shm", 1), _at(
        points, "ninefold-v2-shm", 16)
    p50_c1 = _median(c1, "p50_ms")
    return {
        "saturation_vs_raw": best / raw.best_images_per_s,
        "overhead_ms_c1": None if p50_c1 is None else p50_c1 - raw.p50_ms_batch1,
        "batching_gain_c16": _ratio(_median(c16, "throughput"), _median(off16, "throughput")),
        "vs_peer_c16": _ratio(_median(c16, "throughput"), _median(peer16, "throughput")),
        "p99_vs_peer_c16": _ratio(_median(c16, "p99_ms"), _median(peer16, "p99_ms")),
        # the same protocol on both sides: v2 ModelInfer, FP32 tensors in, logits out
        "v2_tensors_vs_peer_c16": _ratio(_median(v2_16, "throughput"), _median(peer_v2_16, "throughput")),
        "v2_tensors_p99_vs_peer_c16": _ratio(_median(v2_16, "p99_ms"), _median(peer_v2_16, "p99_ms")),
        # OIP HTTP/REST with binary tensors: against KServe's HTTP, and against ninefold's own gRPC
        "http_tensors_vs_peer_c16": _ratio(_median(http16, "throughput"), _median(peer_http16, "throughput")),
        "http_vs_grpc_tensors_c16": _ratio(_median(http16, "throughput"), _median(v2_16, "throughput")),
        # system shared memory against the same tensors in the message (> 1 = shared memory is faster)
        "shm_p50_gain_c1": _ratio(_median(v2_1, "p50_ms"), _median(shm1, "p50_ms")),
        "shm_throughput_gain_c16": _ratio(_median(shm16, "throughput"), _median(v2_16, "throughput")),
        "shm_cpu_gain_c16": _ratio(_cpu(v2_16), _cpu(shm16)),
        # CPU time per request: what survives a shared machine (> 1 = ninefold costs less)
        "cpu_vs_peer_c16": _ratio(_cpu(peer16), _cpu(c16)),
        "cpu_vs_raw": _ratio(
            min(raw.cpu_us_per_image.values(), default=None),
            min((p.server_cpu_us for p in ours if p.server_cpu_us is not None), default=None),
        ),
    }


def environment() -> dict[str, object]:
    versions = {name: metadata.version(name) for name in ("onnxruntime", "grpcio", "protobuf", "numpy", "pillow")}
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(),
                    "python": platform.python_version(), "load_average_at_start": os.getloadavg()},
        "versions": versions,
    }


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--models", default="tiny,pool224,resnet18")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per point and repeat")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip the KServe peer (no venv to build)")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository",
                        help="the small families, for the start-up time and memory figure (exported when stale)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: instances on the first GPU (TensorRT EP, then CUDA EP) for every system")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up time and memory figure")
    args = parser.parse_args(argv)
    plan = LoadPlan(
        concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
        duration_s=args.duration, warmup_s=args.warmup, repeats=args.repeats,
    )
    repository = None if args.no_startup else args.repository
    models = tuple(args.models.split(","))
    return Settings(args.out, args.cache, plan, models, not args.no_peer, repository, args.device)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    settings.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    per_model: dict[str, dict[str, object]] = {}
    summary: dict[str, object] = {**environment(), "plan": settings.plan.__dict__, "models": per_model}
    if settings.repository is not None:
        summary["startup"] = measure_startup(settings.repository, settings.out / "logs")
    models_dir = build_models(settings.cache, settings.device)
    peer = peer_python(settings.cache) if settings.peer else None
    all_points: list[Point] = []
    for model in settings.models:
        raw, points = run_model(model, models_dir, settings, peer)
        all_points += points
        figures = ratios(raw, points)
        per_model[model] = {"ratios": figures, "raw": raw.as_dict(), "points": [p.as_dict() for p in points]}
        shown = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in figures.items())
        print(f"bench: {model}: {shown}", file=sys.stderr)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    (settings.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=_plain))
    write_results(all_points, settings.out, {"date": summary["date"]}, stem="results")
    print(f"bench: {settings.out}/summary.json, results.md, results.png ({summary['wall_seconds']} s)", file=sys.stderr)
    return 0


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
