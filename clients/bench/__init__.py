"""`ninefold bench`: a load generator for ninefold's task API and any Open Inference Protocol server.

Closed loop at given concurrencies and/or open loop at given rates, after a warm-up, for a fixed
duration, repeated; per point: throughput, p50/p90/p99/max latency, errors by gRPC status code,
and the server's average batch size read from its /metrics. Results as JSON, Markdown and a PNG plot.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from clients.bench.loadgen import Call, Samples, run_closed_loop, run_open_loop
from clients.bench.report import Point, write_results
from clients.bench.scrape import average_batch_size, process_cpu_seconds, read_batch_counters
from clients.bench.stats import combine, summarise
from clients.bench.targets import HttpTarget, Target, classify_target, open_call, v2_image_target
from clients.channel import NO_SERVER_HINT, SERVER_VARIABLE, default_target
from contract.names import IMAGES, LOGITS


@dataclass(frozen=True)
class LoadPlan:
    """How to load one system: closed-loop concurrencies and/or open-loop rates, and timings."""

    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    rates: tuple[float, ...] = ()
    duration_s: float = 5.0
    warmup_s: float = 1.0
    repeats: int = 3
    timeout_s: float = 30.0


async def measure_system(
    server: str,
    target: Target | HttpTarget,
    plan: LoadPlan,
    *,
    system: str,
    model: str,
    metrics_url: str | None = None,
    server_pid: int | None = None,
    progress: bool = True,
) -> list[Point]:
    """Every load point of `plan` against one running server, in order.

    With `server_pid` (a server on this machine) each point also reports the server's CPU time
    per request; the warm-up then runs as its own short load before the measured window.
    """
    points: list[Point] = []
    loads = [("closed", float(c)) for c in plan.concurrencies] + [("open", r) for r in plan.rates]
    async with open_call(server, target, plan.timeout_s) as call:
        for mode, load in loads:
            runs, batch_sizes, cpu_us = [], [], []
            for _ in range(plan.repeats):
                warmup_s = plan.warmup_s
                if server_pid is not None and warmup_s > 0:
                    await _load(call, mode, load, warmup_s, 0.0)
                    warmup_s = 0.0
                cpu_before = process_cpu_seconds(server_pid) if server_pid is not None else None
                before = read_batch_counters(metrics_url, model) if metrics_url else None
                samples = await _load(call, mode, load, plan.duration_s, warmup_s)
                if cpu_before is not None and server_pid is not None and samples.latencies_s:
                    cpu_us.append((process_cpu_seconds(server_pid) - cpu_before) / len(samples.latencies_s) * 1e6)
                if before is not None and metrics_url:
                    batch = average_batch_size(before, read_batch_counters(metrics_url, model))
                    if batch is not None:
                        batch_sizes.append(batch)
                runs.append(summarise(samples))
            result = combine(runs)
            batch = sum(batch_sizes) / len(batch_sizes) if batch_sizes else None
            cpu = sorted(cpu_us)[len(cpu_us) // 2] if cpu_us else None
            point = Point(system, model, mode, load, result, batch, cpu)
            points.append(point)
            if progress:
                _print_progress(point)
    return points


async def first_request_error(server: str, target: Target | HttpTarget, timeout_s: float) -> str:
    """Send the target's request once: "" when it is answered, else why not and what to do.

    A wrong address or model fails every request; saying so before the load starts beats
    thousands of failed requests and a table of errors.
    """
    async with open_call(server, target, timeout_s) as call:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            what = f"{code.name}: {' '.join((error.details() or '').split())}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"{what}; is a server running at --server {server}? {NO_SERVER_HINT}"
            if code == grpc.StatusCode.NOT_FOUND:
                return f"{what}; `ninefold models --server {server}` lists the models (--model)"
            return what
    return ""


async def _load(call: Call, mode: str, load: float, duration_s: float, warmup_s: float) -> Samples:
    if mode == "closed":
        return await run_closed_loop(call, int(load), duration_s, warmup_s)
    return await run_open_loop(call, load, duration_s, warmup_s)


def _print_progress(point: Point) -> None:
    m = point.result.median
    load = f"c={point.load:g}" if point.mode == "closed" else f"{point.load:g}/s"
    batch = f" batch {point.avg_batch_size:.2f}" if point.avg_batch_size is not None else ""
    cpu = f" server {point.server_cpu_us:.0f} us/req" if point.server_cpu_us is not None else ""
    errors = f" errors {m.errors}" if m.errors else ""
    print(
        f"  {point.model:>10} {point.system:<20} {load:>7}: {m.throughput:8.1f}/s  "
        f"p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms{batch}{cpu}{errors}",
        file=sys.stderr,
        flush=True,
    )


def synthetic_jpeg(size: int = 224) -> bytes:
    """A textured test picture (deterministic), for runs without --image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([(xx * 255 // size), (yy * 255 // size), ((xx + yy) * 127 // size)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _numbers(text: str, kind: type) -> tuple:
    return tuple(kind(part) for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ninefold bench",
        description="Load a ninefold (task API) or Open Inference Protocol server and report latency and throughput.",
    )
    parser.add_argument("--server", default=default_target(os.environ),
                        help=f"HOST:PORT of the gRPC server; env {SERVER_VARIABLE} (default: %(default)s)")
    parser.add_argument("--model", required=True, help="model name to send requests to")
    parser.add_argument("--protocol", choices=("ninefold", "v2"), default="ninefold",
                        help="ninefold: Vision/Classify; v2: ModelInfer with the JPEG as a BYTES input 'images'")
    parser.add_argument("--image", type=Path, help="JPEG/PNG to send (default: a synthetic 224x224 JPEG)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--concurrency", default="1,4,16,64", help="closed-loop concurrencies, comma separated")
    parser.add_argument("--rate", default="", help="open-loop request rates per second, comma separated")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point and repeat")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each repeat")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; medians and spread are reported")
    parser.add_argument("--metrics-url", help="the server's /metrics URL, to read its average batch size")
    parser.add_argument("--server-pid", type=int,
                        help="process id of a server on this machine, to report its CPU time per request")
    parser.add_argument("--system", default="ninefold", help="name of the system in the results")
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="directory for JSON/MD/PNG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        jpeg = args.image.read_bytes() if args.image else synthetic_jpeg()
    except OSError as error:
        print(f"ninefold bench: cannot read {args.image}: {error.strerror}", file=sys.stderr)
        return 2
    if args.protocol == "ninefold":
        target = classify_target(args.model, jpeg, args.top_k)
    else:
        target = v2_image_target(args.model, IMAGES, jpeg, LOGITS, args.top_k)
    plan = LoadPlan(
        concurrencies=_numbers(args.concurrency, int),
        rates=_numbers(args.rate, float),
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeats=args.repeats,
    )
    print(f"ninefold bench: {target.description} at {args.server}", file=sys.stderr)
    failure = asyncio.run(first_request_error(args.server, target, min(plan.timeout_s, 10.0)))
    if failure:
        print(f"ninefold bench: the first request failed, nothing measured: {failure}", file=sys.stderr)
        return 1
    points = asyncio.run(
        measure_system(
            args.server, target, plan, system=args.system, model=args.model,
            metrics_url=args.metrics_url, server_pid=args.server_pid,
        )
    )
    failed = sum(sum(p.result.median.errors.values()) for p in points)
    extra = {"target": target.description, "server": args.server, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_results(points, args.out, extra, stem="bench")
    print(f"ninefold bench: results in {args.out}/bench.json, .md, .png", file=sys.stderr)
    if failed and all(p.result.median.completed == 0 for p in points):
        print("ninefold bench: every request failed", file=sys.stderr)
        return 1
    return 0
