"""The GPU check behind scripts/gpu_check.sh: GPU tests, ResNet-50 export, server + `ninefold bench`, one summary.

On a GPU host: runs `pytest -m gpu` (tests/serving/test_gpu_path.py), exports ResNet-50 (full config, random
init) in fp32 and fp16 (`resnet_full` and `resnet_full_fp16` beside it), serves the small families + both on the
GPU, benches them over the task API at each concurrency while sampling GPU utilisation with NVML, benches
resnet_small on the same machine's CPU (CUDA_VISIBLE_DEVICES=""), and writes OUTDIR/gpu_check.json + .md.
On a CPU-only machine every GPU part is reported "skipped" and the rest still runs (so the script is checked
everywhere); --quick keeps that run short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.bench import LoadPlan, measure_system, synthetic_jpeg  # noqa: E402
from clients.bench.report import Point  # noqa: E402
from clients.bench.targets import classify_target  # noqa: E402
from clients.server_process import ServerProcess  # noqa: E402
from contract.names import FP16, precision_model_name  # noqa: E402
from serving.backends import tensorrt_loadable  # noqa: E402
from serving.placement import Gpu, discover_gpus  # noqa: E402

SMALL_MODEL = "resnet_small"
FULL_MODEL = "resnet_full"
FULL_MODEL_FP16 = precision_model_name(FULL_MODEL, FP16)
SKIPPED = "skipped"


@dataclass
class Summary:
    """What the check found; written as JSON and as Markdown."""

    environment: dict[str, Any]
    steps: dict[str, str] = field(default_factory=dict)  # step -> "ok ..." / "failed ..." / "skipped (why)"
    points: list[dict[str, Any]] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for gpu_check.json/.md, logs and bench results")
    parser.add_argument("--quick", action="store_true",
                        help="short CPU-sized run: c=1,16, 1 s points, 1 repeat, no ResNet-50 export")
    parser.add_argument("--repository", type=Path,
                        help="an existing repository of the small families (default: export them into OUT)")
    parser.add_argument("--concurrency", default="1,16,64,256", help="closed-loop concurrencies")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


def environment(gpus: Sequence[Gpu]) -> dict[str, Any]:
    import onnxruntime

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "tensorrt_loadable": tensorrt_loadable(),
        "gpus": [{"index": g.index, "name": g.name, "arch": g.arch} for g in gpus],
        "cpu_cores": os.cpu_count(),
    }


def run_logged(command: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Run `command` from the repository root, its output in `log`; its exit status."""
    print(f"gpu_check: {' '.join(command)}  (log {log})", file=sys.stderr, flush=True)
    with log.open("wb") as output:
        return subprocess.run(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}, check=False).returncode


def gpu_tests(out: Path) -> str:
    report = out / "gpu_tests.xml"
    status = run_logged([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", f"--junitxml={report}",
                         "tests/serving/test_gpu_path.py"], out / "gpu_tests.log")
    import xml.etree.ElementTree as ElementTree

    if not report.is_file():  # pytest did not run (not installed?): its log says why
        return f"failed (exit {status}, no report; see gpu_tests.log)"
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    verdict = "ok" if status == 0 else "failed"
    failed = counts["failures"] + counts["errors"]
    return f"{verdict}: {counts['tests']} tests, {failed} failed, {counts['skipped']} skipped"


def export_small(out: Path, repository: Path) -> str:
    status = run_logged([sys.executable, "-m", "export", "--config", "small", "--out", str(repository)],
                        out / "export_small.log")
    return "ok" if status == 0 else f"failed (exit {status}, see export_small.log)"


def export_resnet50(out: Path, repository: Path) -> dict[str, str]:
    """ResNet-50 (torchvision, random init: the speed does not depend on the weights) in fp32 and in fp16."""
    checkpoint = repository.parent / "resnet50_random.pt"
    written = run_logged([sys.executable, "-c",
                          "import sys, torch, torchvision; torch.manual_seed(0); "
                          "torch.save(torchvision.models.resnet50().state_dict(), sys.argv[1])", str(checkpoint)],
                         out / "resnet50_checkpoint.log")
    if written != 0:
        return {"resnet50 fp32": "failed (checkpoint, see resnet50_checkpoint.log)", "resnet50 fp16": SKIPPED}
    results = {}
    for precision in ("fp32", FP16):  # one export each, into the same repository: fp16 lands beside fp32
        log = f"export_resnet50_{precision}.log"
        status = run_logged([sys.executable, "-m", "export", "--families", "resnet", "--config", "full",
                             "--weights", f"resnet={checkpoint}", "--precision", precision, "--out", str(repository)],
                            out / log)
        results[f"resnet50 {precision}"] = "ok" if status == 0 else f"failed (exit {status}, see {log})"
    return results


class GpuSampler:
    """GPU utilisation (NVML, percent) sampled every 100 ms while a bench point runs; mean over the window."""

    def __init__(self, index: int) -> None:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    @contextmanager
    def window(self) -> Iterator[list[float]]:
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                samples.append(float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield samples
        finally:
            stop.set()
            thread.join()


def bench(
    server: ServerProcess, system: str, models: Sequence[str], plan: LoadPlan, sampler: GpuSampler | None
) -> list[dict[str, Any]]:
    """Every model at every concurrency of `plan`, one point at a time so each gets its own GPU window."""
    jpeg = synthetic_jpeg(224)
    rows = []
    for model in models:
        for concurrency in plan.concurrencies:
            one = LoadPlan(concurrencies=(concurrency,), duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                           repeats=plan.repeats)
            samples: list[float] = []
            run = measure_system(server.target, classify_target(model, jpeg, 5), one, system=system, model=model,
                                 metrics_url=server.metrics_url, server_pid=server.process.pid)
            if sampler is None:
                points: list[Point] = asyncio.run(run)
            else:
                with sampler.window() as samples:
                    points = asyncio.run(run)
            row = points[0].as_dict()
            row["gpu_utilization_percent"] = sum(samples) / len(samples) if samples else None
            rows.append(row)
    return rows


def markdown(summary: Summary) -> str:
    env = summary.environment
    lines = [
        f"# ninefold GPU check, {env['date']}",
        "",
        f"host {env['host']}, {env['cpu_cores']} cores, onnxruntime {env['onnxruntime']}, "
        f"GPUs: {', '.join(g['name'] for g in env['gpus']) or 'none'}, TensorRT loadable: {env['tensorrt_loadable']}",
        "",
        "| step | result |",
        "|---|---|",
        *(f"| {step} | {result} |" for step, result in summary.steps.items()),
        "",
        "| system | model | c | throughput /s | p50 ms | p99 ms | avg batch | GPU util % | server CPU us/req "
        "| errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in summary.points:
        median = p["median"]
        util = "-" if p["gpu_utilization_percent"] is None else f"{p['gpu_utilization_percent']:.0f}"
        batch = "-" if p["avg_batch_size"] is None else f"{p['avg_batch_size']:.2f}"
        cpu = "-" if p["server_cpu_us_per_request"] is None else f"{p['server_cpu_us_per_request']:.0f}"
        errors = ", ".join(f"{code}: {n}" for code, n in sorted(median["errors"].items())) or "-"
        lines.append(f"| {p['system']} | {p['model']} | {p['load']:g} | {median['throughput']:.0f} "
                     f"| {median['p50_ms']:.2f} | {median['p99_ms']:.2f} | {batch} | {util} | {cpu} | {errors} |")
    return "\n".join(lines) + "\n"


def serve_and_bench(
    repository: Path, out: Path, system: str, models: Sequence[str], plan: LoadPlan,
    sampler: GpuSampler | None, env: Mapping[str, str] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Start a server on `repository`, bench `models` as `system`; ("ok" or why not, the points)."""
    log = out / f"server_{system.replace(' ', '_')}.log"
    try:
        with ServerProcess.start(repository, log=log, env=env) as server:
            return "ok", bench(server, system, models, plan, sampler)
    except Exception as error:  # a failed step is reported; the summary is still written
        return f"failed ({type(error).__name__}: {str(error).splitlines()[0]})", []


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    gpus = discover_gpus() if has_cuda else ()
    summary = Summary(environment(gpus))
    why = "NVML lists none (nvidia-ml-py missing?)" if has_cuda else "this onnxruntime has no CUDA EP"
    no_gpu = f"{SKIPPED} (no GPU: {why})"
    concurrencies = (1, 16) if args.quick else tuple(int(c) for c in args.concurrency.split(","))
    plan = LoadPlan(concurrencies=concurrencies, duration_s=1.0 if args.quick else args.duration,
                    warmup_s=0.5 if args.quick else 1.0, repeats=1 if args.quick else args.repeats)

    summary.steps["gpu tests (pytest -m gpu)"] = gpu_tests(out) if gpus else no_gpu
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:  # repositories stay out of OUT
        repository = Path(scratch) / "repository"
        if args.repository:
            shutil.copytree(args.repository, repository)
            summary.steps["small families"] = f"ok (copied from {args.repository})"
        else:
            summary.steps["small families"] = export_small(out, repository)
        repository.mkdir(parents=True, exist_ok=True)
        if gpus and not args.quick:
            summary.steps.update(export_resnet50(out, repository))
        else:
            why = no_gpu if not gpus else f"{SKIPPED} (--quick)"
            summary.steps.update({"resnet50 fp32": why, "resnet50 fp16": why})
        served = [m for m in (SMALL_MODEL, FULL_MODEL, FULL_MODEL_FP16) if (repository / m).is_dir()]
        sampler = GpuSampler(gpus[0].index) if gpus else None
        system = f"ninefold gpu{gpus[0].index}" if gpus else "ninefold cpu"
        runs: list[tuple[str, Path, list[str], GpuSampler | None, dict[str, str] | None]] = [
            (system, repository, served, sampler, None)
        ]
        if gpus:  # the same machine's CPU, the figure resnet_small on the GPU must beat
            runs.append(("ninefold cpu", repository, [SMALL_MODEL], None, {"CUDA_VISIBLE_DEVICES": ""}))
            # IOBinding's effect on the GPU: the same models served with unbound rungs
            runs.append((f"{system} io-binding off", repository, served, sampler, {"NINEFOLD_IO_BINDING": "off"}))
        else:
            summary.steps["GPU utilisation (NVML)"] = no_gpu
        for name, folder, models, watcher, env in runs:
            summary.steps[f"serve + bench ({name})"], rows = serve_and_bench(
                folder, out, name, models, plan, watcher, env
            )
            summary.points += rows
    (out / "gpu_check.json").write_text(json.dumps(summary.__dict__, indent=2, sort_keys=True))
    (out / "gpu_check.md").write_text(markdown(summary))
    print(markdown(summary))
    failed = [step for step, result in summary.steps.items() if result.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
