"""Write benchmark results as JSON, a Markdown table and a latency-throughput plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.bench.stats import Repeated


@dataclass(frozen=True)
class Point:
    """One measured load point of one system on one model."""

    system: str
    model: str
    mode: str                 # "closed" (concurrency) or "open" (rate)
    load: float               # concurrency, or requests per second for open loop
    result: Repeated
    avg_batch_size: float | None
    server_cpu_us: float | None = None  # server CPU time per request (median of repeats), when measured

    def as_dict(self) -> dict[str, object]:
        return {
            "system": self.system,
            "model": self.model,
            "mode": self.mode,
            "load": self.load,
            "avg_batch_size": self.avg_batch_size,
            "server_cpu_us_per_request": self.server_cpu_us,
            **self.result.as_dict(),
        }


def markdown_table(points: Sequence[Point]) -> str:
    """A table a person can read: one row per point, medians with the spread of throughput."""
    rows = [
        "| model | system | load | throughput (/s) | p50 ms | p90 ms | p99 ms | max ms | avg batch "
        "| server CPU us/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in points:
        m = p.result.median
        load = f"c={p.load:g}" if p.mode == "closed" else f"{p.load:g}/s"
        batch = f"{p.avg_batch_size:.2f}" if p.avg_batch_size is not None else "-"
        cpu = f"{p.server_cpu_us:.0f}" if p.server_cpu_us is not None else "-"
        errors = ", ".join(f"{code}: {n}" for code, n in sorted(m.errors.items())) or "-"
        rows.append(
            f"| {p.model} | {p.system} | {load} | {m.throughput:.0f} ± {p.result.spread['throughput'] / 2:.0f} "
            f"| {m.p50_ms:.2f} | {m.p90_ms:.2f} | {m.p99_ms:.2f} | {m.max_ms:.1f} | {batch} | {cpu} | {errors} |"
        )
    return "\n".join(rows) + "\n"


def plot(points: Sequence[Point], path: Path) -> None:
    """p50 and p99 latency against throughput, one line per (model, system)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({p.model for p in points})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for system in sorted({p.system for p in points if p.model == model}):
            line = sorted((p for p in points if p.model == model and p.system == system), key=lambda p: p.load)
            x = [p.result.median.throughput for p in line]
            (drawn,) = ax.plot(x, [p.result.median.p50_ms for p in line], marker="o", label=f"{system} p50")
            ax.plot(x, [p.result.median.p99_ms for p in line], marker="x", linestyle="--",
                    color=drawn.get_color(), label=f"{system} p99")
        ax.set_title(model)
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(points: Sequence[Point], out_dir: Path, extra: dict[str, object], stem: str = "results") -> None:
    """`<stem>.json` (every point, every run), `<stem>.md` and `<stem>.png` under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**extra, "points": [p.as_dict() for p in points]}
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2, sort_keys=True))
    (out_dir / f"{stem}.md").write_text(markdown_table(points))
    plot(points, out_dir / f"{stem}.png")
