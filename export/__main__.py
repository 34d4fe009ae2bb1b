"""``ninefold export`` / ``python -m export``: train or load the families and write the model repository.

Exit status: 0 when every model was written with passing parity and quality; 1 when a graph failed parity
(ONNX against PyTorch, or a TensorRT engine against ONNX) or a model missed a quality bar (nothing of that
family is written; ``--allow-below-threshold`` writes it with a warning stamp); 2 on bad input (unknown
family, weights, output directory), with one line on stderr saying what to change.

``--seeds 0-4`` measures instead of exporting: it trains and evaluates each family once per seed and
prints the per-seed quality table (exit 1 when any seed misses its bar); nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from contract.names import FP32
from export.families.base import ExportError, ParityError, QualityError

if TYPE_CHECKING:
    from export.pipeline import ModelResult, SeedRun

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
    parser.add_argument(
        "--preprocess",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the served preprocessing (repeatable; docs/MODEL_REPOSITORY.md): mode "
        "(square|shorter_side|letterbox), size (crop or canvas, e.g. 224), resize, max_size, interpolation "
        "(bilinear|bicubic|nearest), antialias, mean, std (e.g. 0.5,0.5,0.5), channel_order, value_range",
    )
    parser.add_argument("--labels", default=None, metavar="FILE", help="class names, one a line (the head's count)")
    parser.add_argument(
        "--variant", default=None, help="a family's variant, e.g. faster_rcnn mobilenet_v3_large_320_fpn"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other config setting (repeatable), e.g. transform_input=true for torchvision's GoogLeNet weights",
    )
    parser.add_argument("--out", default="model_repository", help="model repository folder (default: %(default)s)")
    parser.add_argument("--tensorrt", action="store_true", help="also build fp16 TensorRT engines (GPU only)")
    parser.add_argument(
        "--precision",
        default=FP32,
        metavar="fp32|fp16|fp32,fp16",
        help="the precision(s) of the written graphs (default: %(default)s); fp16 (classifiers only) writes "
        "<model>_fp16 beside the fp32 model, gated by its answer agreement with fp32 (docs/EXPORT.md)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and training")
    parser.add_argument(
        "--allow-below-threshold",
        action="store_true",
        help="write models that miss their quality bar, stamped (report and config.pbtxt) so the server warns",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        metavar="A-B|A,B,...",
        help="measure only: train and evaluate each family on these seeds and print the quality table",
    )
    captioner = parser.add_argument_group(
        "captioner", "a captioner checkpoint of other words or sizes (else read from the checkpoint, else the defaults)"
    )
    captioner.add_argument(
        "--captioner-vocabulary", type=Path, metavar="FILE", help="its tokens, one a line (line i = token id i)"
    )
    captioner.add_argument("--captioner-max-length", type=int, metavar="N", help="decoding steps: words + <end>")
    captioner.add_argument("--captioner-embed-dim", type=int, metavar="N", help="word embedding width")
    captioner.add_argument("--captioner-hidden-size", type=int, metavar="N", help="LSTM state width")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="families exported at once in worker processes (default: NINEFOLD_EXPORT_JOBS or up to 2 cores)",
    )
    return parser.parse_args(argv)


def captioner_settings(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The --captioner-* arguments given, as ``build_repository`` settings (CaptionerConfig.SETTINGS)."""
    settings: dict[str, object] = {
        name: value
        for name, value in (
            ("max_length", args.captioner_max_length),
            ("embed_dim", args.captioner_embed_dim),
            ("hidden_size", args.captioner_hidden_size),
        )
        if value is not None
    }
    if args.captioner_vocabulary is not None:
        try:
            settings["vocabulary"] = tuple(args.captioner_vocabulary.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as error:
            raise ExportError(f"cannot read --captioner-vocabulary {args.captioner_vocabulary}: {error}") from None
    return {"captioner": settings} if settings else {}


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``1,5`` -> [1, 5]."""
    try:
        if "-" in text:
            first, last = text.split("-", 1)
            seeds = list(range(int(first), int(last) + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A-B or A,B,... (non-negative integers), got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected A-B or A,B,... (non-negative integers), got {text!r}")
    return seeds


def table_row(result: ModelResult) -> tuple[str, ...]:
    """model, task, quality, parity, tensorrt, seconds (train + evaluate + export) of one written model."""
    quality = "-"
    if result.quality is not None:
        verdict = "ok" if result.quality.passed else f"BELOW ({'; '.join(result.quality.misses())})"
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
    return _aligned(header, [table_row(result) for result in results])


def seed_table(runs: Sequence[SeedRun]) -> str:
    """Per family: its main metric on every seed, the worst seed, the bar, and mean CPU seconds a seed.

    A seed whose model misses any bar (gates included) is marked ``!``.
    """
    seeds = sorted({run.seed for run in runs})
    header = ("family", "metric", *(f"seed {seed}" for seed in seeds), "worst", "bar", "cpu s")
    rows = []
    for family in dict.fromkeys(run.family for run in runs):
        mine = {run.seed: run for run in runs if run.family == family}
        measured = [run.quality for run in mine.values() if run.quality is not None]
        if not measured:
            continue
        first = measured[0]
        cells = []
        for seed in seeds:
            quality = mine[seed].quality if seed in mine else None
            cells.append("-" if quality is None else f"{quality.value:.3f}{'' if quality.passed else ' !'}")
        pick = min if first.higher_is_better else max
        worst = pick(quality.value for quality in measured)
        cpu = sum(run.cpu_seconds for run in mine.values()) / len(mine)
        rows.append((family, first.metric, *cells, f"{worst:.3f}", f"{first.threshold:g}", f"{cpu:.0f}"))
    return _aligned(header, rows)


def _aligned(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def measure(families: Sequence[str] | None, seeds: Sequence[int], config: str) -> int:
    """``--seeds``: the per-seed quality table on stdout (with the threads and kernels it ran with)."""
    import torch

    from export.pipeline import measure_seeds
    from export.train import set_threads

    set_threads()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {torch.backends.cpu.get_cpu_capability()}")
    runs = measure_seeds(
        families,
        seeds,
        config=config,
        on_run=lambda run: print(
            f"measured {run.family} seed {run.seed}: "
            + ("-" if run.quality is None else ", ".join(bar.describe() for bar in run.quality.bars))
            + f" ({run.cpu_seconds:.0f} CPU-s)",
            file=sys.stderr,
            flush=True,
        ),
    )
    print(seed_table(runs))
    return EXIT_FAILED if any(run.quality is not None and not run.quality.passed for run in runs) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    created_out = not Path(args.out).exists()
    families = None if args.families.strip() == "all" else [f.strip() for f in args.families.split(",") if f.strip()]
    try:
        if args.seeds is not None:
            return measure(families, args.seeds, args.config)
        from export.pipeline import ExportOptions, build_repository, parse_pairs, parse_weights
        from export.precision import parse_precisions

        options = ExportOptions(
            preprocess=parse_pairs(args.preprocess, "--preprocess"),
            labels=args.labels,
            variant=args.variant,
            settings=parse_pairs(args.set, "--set"),
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
            allow_below_threshold=args.allow_below_threshold,
            settings=captioner_settings(args),
            options=options,
            precisions=parse_precisions(args.precision),
        )
    except (ParityError, QualityError) as error:
        print(f"ninefold export: {error}", file=sys.stderr)
        return EXIT_FAILED
    except ExportError as error:
        print(f"ninefold export: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if created_out:  # a failed export leaves no empty --out folder behind (rmdir keeps a written one)
            with contextlib.suppress(OSError):
                Path(args.out).rmdir()
    print(format_table(results))
    below = [r.name for r in results if r.quality is not None and not r.quality.passed]
    if below:
        print(f"warning: written below the quality bar: {', '.join(below)} (see 1/export_report.json)", file=sys.stderr)
    print(f"wrote {len(results)} models to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
