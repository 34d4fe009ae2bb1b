"""``ninefold export`` / ``python -m export``: train or load the families and write the model repository.

Exit status: 0 when every model was written with passing parity; 1 when a graph failed parity (nothing of
that family is written); 2 on bad input (unknown family, weights, output directory), with one line on
stderr saying what to change.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from export.families.base import ExportError, ParityError, Quality

if TYPE_CHECKING:
    from export.pipeline import ModelResult

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ninefold export",
        description="Train (small) or load (full) CNN families, export them to ONNX (and TensorRT) "
        "and write a Triton-layout model repository.",
    )
    parser.add_argument("--families", default="all", help="'all' or a comma-separated list, e.g. resnet,vgg")
    parser.add_argument("--config", default="small", help="small (trains on synthetic scenes) or full (loads)")
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="FAMILY=PATH",
        help="a state_dict checkpoint for a family (repeatable); required for --config full",
    )
    parser.add_argument("--out", default="model_repository", help="model repository folder (default: %(default)s)")
    parser.add_argument("--tensorrt", action="store_true", help="also build fp16 TensorRT engines (GPU only)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and training")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="families exported at once in worker processes (default: NINEFOLD_EXPORT_JOBS or up to 2 cores)",
    )
    return parser.parse_args(argv)


def _shortfall(quality: Quality) -> list[str]:
    """The missed bars: the headline's threshold alone, a further bar with its metric and value."""
    return [
        f"{m.threshold:g}" if m.metric == quality.metric else f"{m.metric} {m.value:.3f} < {m.threshold:g}"
        for m in quality.missed
    ]


def table_row(result: ModelResult) -> tuple[str, ...]:
    """model, task, quality, parity, tensorrt, seconds (train + evaluate + export) of one written model."""
    quality = "-"
    if result.quality is not None:
        verdict = "ok" if result.quality.passed else "BELOW " + ", ".join(_shortfall(result.quality))
        quality = f"{result.quality.metric} {result.quality.value:.3f} {verdict}"
    parity = f"{result.worst_parity:.2e} {'ok' if result.parity_passed else 'FAIL'}"
    engine = "-"
    if result.tensorrt:
        engine = "ok" if all(c.passed for c in result.tensorrt) else "DIFFERS"
    seconds = f"{result.train_seconds + result.export_seconds:.1f}"
    return (result.name, result.task or "-", quality, parity, engine, seconds)


def format_table(results: Sequence[ModelResult]) -> str:
    """The closing table: one row per written model."""
    header = ("model", "task", "quality", "parity max|diff|", "tensorrt", "time s")
    rows = [table_row(result) for result in results]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        from export.pipeline import build_repository, parse_weights

        families = (
            None if args.families.strip() == "all" else [f.strip() for f in args.families.split(",") if f.strip()]
        )
        results = build_repository(
            args.out,
            families=families,
            config=args.config,
            seed=args.seed,
            weights=parse_weights(args.weights),
            build_tensorrt=args.tensorrt,
            jobs=args.jobs,
            on_model=lambda result: print("wrote " + "  ".join(table_row(result)), file=sys.stderr, flush=True),
        )
    except ParityError as error:
        print(f"ninefold export: {error}", file=sys.stderr)
        return EXIT_FAILED
    except ExportError as error:
        print(f"ninefold export: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_table(results))
    below = [r.name for r in results if r.quality is not None and not r.quality.passed]
    if below:
        print(f"warning: quality below threshold for {', '.join(below)} (see 1/export_report.json)", file=sys.stderr)
    print(f"wrote {len(results)} models to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
