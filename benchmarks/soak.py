"""`make soak`: a mixed load on the small families at 80% of what the server can take, then at twice it,
and the checks that nothing broke, leaked or went unanswered. Loopback only; bounded (10 min at most).

One server (clients.server_process, free loopback ports) on the model repository. The mix cycles over
one task API call per task the repository serves (the task's default model; the same requests the
client library sends), one Open Inference Protocol ModelInfer, and one undecodable message (a bad
input, expected INVALID_ARGUMENT). Phases, with the load generator of clients.bench:

1. saturation: closed loop at --concurrency for --saturation-seconds -> X, the mix's served requests/s;
2. steady: open loop at 0.8 X for --steady-seconds: everything should be served;
3. overload: open loop at 2 X for --overload-seconds: the server sheds (RESOURCE_EXHAUSTED,
   DEADLINE_EXCEEDED), keeps answering its health check, and its memory stays flat.

Figures per phase: requests sent, served (OK), non-OK by status code, p99 of the served ones. Server:
RSS after the saturation phase (warm) and at the end, with the bound end <= start + max(RSS_SLACK_MB,
RSS_DRIFT * start); ERROR lines and tracebacks in its log (one rate-limited line about undecodable
messages is expected). Writes OUT/soak.json and OUT/soak.md; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from clients import calls
from clients.bench import synthetic_jpeg
from clients.bench.loadgen import Samples, run_closed_loop, run_open_loop
from clients.bench.targets import V2_INFER_METHOD, Target, make_call, v2_image_target
from clients.client import VisionClient
from clients.server_process import ServerProcess
from contract.names import IMAGES
from protos.inference import grpc_service_pb2 as v2
from protos.inference import grpc_service_pb2_grpc as v2_grpc

STEADY_LOAD = 0.8
OVERLOAD = 2.0
MAX_TOTAL_S = 600.0
#: RSS may grow by this fraction of the warm figure, or this many MB, whichever is larger.
RSS_DRIFT = 0.2
RSS_SLACK_MB = 64.0
BAD_INPUT = "undecodable ModelInfer"
EXPECTED_BAD_CODE = "INVALID_ARGUMENT"
#: How an overloaded server may refuse: queue full, or the call's deadline passed before an answer.
SHEDDING_CODES = frozenset({"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
NO_STATUS = "no status"
_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", 64 * 1024 * 1024),)


@dataclass(frozen=True)
class Phase:
    """One load phase: what was offered and what came back."""

    name: str
    mode: str  # "closed" (concurrency) or "open" (requests/s)
    load: float
    seconds: float
    sent: int
    served: int
    non_ok: dict[str, int]  # status code -> count, the bad inputs' expected INVALID_ARGUMENT excluded
    bad_inputs: dict[str, int]  # what the undecodable messages got (all INVALID_ARGUMENT when right)
    p99_ms: float
    throughput: float  # served per second
    unanswered: dict[str, int]  # calls that ended without a gRPC status, by what the client raised


@dataclass(frozen=True)
class Report:
    phases: list[Phase]
    mix: list[str]
    rss_start_mb: float
    rss_end_mb: float
    rss_bound_mb: float
    log_errors: int
    log_tracebacks: int
    healthy_after: bool

    def checks(self) -> dict[str, bool]:
        steady, overload = self.phases[1], self.phases[2]
        return {
            "steady load held (no non-OK at 80% of saturation)": not steady.non_ok,
            "overload shed only as RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED": set(overload.non_ok) <= SHEDDING_CODES,
            "overload answered (health SERVING after 2x saturation)": self.healthy_after,
            "bad inputs refused INVALID_ARGUMENT (or shed)": all(
                set(p.bad_inputs) <= {EXPECTED_BAD_CODE} | SHEDDING_CODES for p in self.phases
            ),
            f"RSS end within the bound ({self.rss_bound_mb:.0f} MB)": self.rss_end_mb <= self.rss_bound_mb,
            "no traceback in the server log": self.log_tracebacks == 0,
            "nothing unanswered (every call ended with a status)": not any(p.unanswered for p in self.phases),
        }


class Mix:
    """A zero-argument call for the load generator that cycles over the mix and counts every outcome."""

    def __init__(self, calls_by_name: Sequence[tuple[str, Callable[[], Awaitable[bytes]]]]) -> None:
        self._cycle = itertools.cycle(calls_by_name)
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.details: dict[str, str] = {}  # status code -> the first message seen with it
        self.started = 0

    def __call__(self) -> Awaitable[bytes]:
        name, call = next(self._cycle)
        return self._counted(name, call)

    async def _counted(self, name: str, call: Callable[[], Awaitable[bytes]]) -> bytes:
        self.started += 1
        try:
            answer = await call()
        except grpc.aio.AioRpcError as error:
            self.outcomes[(name, error.code().name)] += 1
            self.details.setdefault(error.code().name, str(error.details()))
            raise
        except Exception as error:  # no gRPC status at all: a lost call, whatever the client says
            self.outcomes[(name, f"{NO_STATUS} ({type(error).__name__})")] += 1
            raise
        self.outcomes[(name, "OK")] += 1
        return answer

    def reset(self) -> None:
        self.outcomes.clear()
        self.started = 0


def mix_targets(server: ServerProcess) -> list[tuple[str, Target]]:
    """One target per task the repository serves (its default model), one v2 ModelInfer, one bad input."""
    jpeg = synthetic_jpeg(96)
    with VisionClient(server.target, timeout=30) as client:
        models = client.list_models()
    tasks = sorted({m.task for m in models if m.ready and m.task and m.task != "caption_decoder"})
    prepared: dict[str, calls.Call[Any]] = {
        "classify": calls.classify(jpeg, top_k=5),
        "detect": calls.detect(jpeg),
        "caption": calls.caption(jpeg),
        "generate": calls.generate(1, seed=7),
        "warp": calls.warp(jpeg),
    }
    targets = [
        (task, Target(f"/ninefold.v1.Vision/{prepared[task].method}", prepared[task].request.SerializeToString(), task))
        for task in tasks if task in prepared
    ]
    classifier = next((m for m in models if m.ready and m.task == "classify"), None)
    if classifier is not None:
        with grpc.insecure_channel(server.target) as channel:
            metadata = v2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                v2.ModelMetadataRequest(name=classifier.name), timeout=30
            )
        targets.append((f"v2 {classifier.name}",
                        v2_image_target(classifier.name, IMAGES, jpeg, metadata.outputs[0].name)))
    targets.append((BAD_INPUT, Target(V2_INFER_METHOD, b"\xff\xff\xff", BAD_INPUT)))
    return targets


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def phase_of(name: str, mode: str, load: float, seconds: float, samples: Samples, mix: Mix) -> Phase:
    lost = Counter({code: n for (_, code), n in mix.outcomes.items() if code.startswith(NO_STATUS)})
    never_ended = mix.started - sum(mix.outcomes.values())
    if never_ended:
        lost[f"{NO_STATUS} (never ended)"] += never_ended
    answered = {key: n for key, n in mix.outcomes.items() if not key[1].startswith(NO_STATUS)}
    bad = {code: n for (target, code), n in answered.items() if target == BAD_INPUT}
    non_ok = Counter({code: n for (target, code), n in answered.items() if target != BAD_INPUT and code != "OK"})
    served = sum(n for (target, code), n in mix.outcomes.items() if target != BAD_INPUT and code == "OK")
    latencies = np.asarray(samples.latencies_s) * 1e3
    return Phase(
        name=name, mode=mode, load=round(load, 2), seconds=seconds, sent=mix.started, served=served,
        non_ok=dict(non_ok), bad_inputs=bad,
        p99_ms=float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        throughput=served / seconds, unanswered=dict(lost),
    )


async def run_phases(
    server: ServerProcess, args: argparse.Namespace
) -> tuple[list[Phase], list[str], float, dict[str, str]]:
    """The three phases; returns them, the mix's names, the RSS after the saturation phase and the first
    message seen with each status code."""
    targets = mix_targets(server)
    async with grpc.aio.insecure_channel(server.target, options=_CHANNEL_OPTIONS) as channel:
        mix = Mix([(name, make_call(channel, target, args.timeout)) for name, target in targets])
        await run_closed_loop(mix, args.concurrency, args.warmup_seconds, 0.0)  # warm-up, not counted
        mix.reset()
        samples = await run_closed_loop(mix, args.concurrency, args.saturation_seconds, 0.0)
        saturation = phase_of("saturation", "closed", args.concurrency, args.saturation_seconds, samples, mix)
        warm_rss = rss_mb(server.process.pid)
        phases = [saturation]
        offered = saturation.sent / args.saturation_seconds  # the mix as sent, bad inputs included
        for name, factor, seconds in (("steady", STEADY_LOAD, args.steady_seconds),
                                      ("overload", OVERLOAD, args.overload_seconds)):
            mix.reset()
            samples = await run_open_loop(mix, factor * offered, seconds, 0.0, max_outstanding=args.max_outstanding)
            phases.append(phase_of(name, "open", factor * offered, seconds, samples, mix))
            print(f"soak: {name} done: {phases[-1]}", file=sys.stderr, flush=True)
    return phases, [name for name, _ in targets], warm_rss, mix.details


def markdown(report: Report) -> str:
    lines = [
        "| phase | offered | seconds | sent | served | served/s | non-OK by code | bad inputs got | unanswered "
        "| p99 served (ms) |",
        "|---|---|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for p in report.phases:
        offered = f"c={p.load:g}" if p.mode == "closed" else f"{p.load:g}/s"
        non_ok = ", ".join(f"{code} {n}" for code, n in sorted(p.non_ok.items())) or "none"
        bad = ", ".join(f"{code} {n}" for code, n in sorted(p.bad_inputs.items())) or "none"
        lost = ", ".join(f"{code} {n}" for code, n in sorted(p.unanswered.items())) or "none"
        lines.append(f"| {p.name} | {offered} | {p.seconds:g} | {p.sent} | {p.served} | {p.throughput:.1f} | "
                     f"{non_ok} | {bad} | {lost} | {p.p99_ms:.1f} |")
    lines += [
        "",
        f"Mix (cycled in order): {', '.join(report.mix)}.",
        f"Server RSS: {report.rss_start_mb:.0f} MB warm, {report.rss_end_mb:.0f} MB at the end "
        f"(bound {report.rss_bound_mb:.0f} MB). Server log: {report.log_errors} ERROR line(s), "
        f"{report.log_tracebacks} traceback(s).",
        "",
    ]
    lines += [f"- [{'x' if ok else ' '}] {check}" for check, ok in report.checks().items()]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("soak_results"))
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients measuring saturation")
    parser.add_argument("--warmup-seconds", type=float, default=10.0)
    parser.add_argument("--saturation-seconds", type=float, default=30.0)
    parser.add_argument("--steady-seconds", type=float, default=240.0)
    parser.add_argument("--overload-seconds", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=5.0, help="deadline of every call, seconds")
    parser.add_argument("--max-outstanding", type=int, default=2048, help="open-loop calls in flight at most")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    total = args.warmup_seconds + args.saturation_seconds + args.steady_seconds + args.overload_seconds
    if total > MAX_TOTAL_S:
        print(f"soak: the phases add up to {total:g} s; keep them within {MAX_TOTAL_S:g} s", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with ServerProcess.start(args.model_repository, log=args.out / "server.log") as server:
        phases, mix, warm_rss, messages = asyncio.run(run_phases(server, args))
        end_rss = rss_mb(server.process.pid)
        healthy = server.health() == health_pb2.HealthCheckResponse.SERVING
    log = server.log()
    report = Report(
        phases=phases, mix=mix, rss_start_mb=warm_rss, rss_end_mb=end_rss,
        rss_bound_mb=warm_rss + max(RSS_SLACK_MB, RSS_DRIFT * warm_rss),
        log_errors=sum(" ERROR " in line for line in log.splitlines()), log_tracebacks=log.count("Traceback"),
        healthy_after=healthy,
    )
    extra = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repository": str(args.model_repository),
             "first_message_by_code": messages}
    (args.out / "soak.json").write_text(json.dumps({**extra, **asdict(report), "checks": report.checks()}, indent=2))
    (args.out / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(report.checks().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
