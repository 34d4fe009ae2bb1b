"""The `ninefold` command: client subcommands against a running server, and the other stages.

    ninefold classify|detect|caption|warp IMAGE... [--model M] [--version V] [--server HOST:PORT] [--json]
    ninefold align IMAGE SENTENCE...
    ninefold explain IMAGE... [--layer L] [--top-k K] [--class LABEL | --class-index N] --out DIR
    ninefold generate [--count N] [--seed S] --out DIR
    ninefold models [--task TASK]
    ninefold export|serve|bench ...     (dispatched to export/, serving/, clients/bench/)
    ninefold --version

Each image is one request; `--json` prints one JSON object per request (see clients/formatting.py).
Every failure prints one line on stderr naming the file or argument it is about, and the exit
status is non-zero. An image that fails on its own (unreadable, not an image, too large) does not
stop the others; anything else (no server, unknown model) stops the command, and when nothing
answers at --server the line says how to start a server. Nothing else is imported unless its
subcommand runs, so the client subcommands never load torch or the server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc

from clients import formatting
from clients.channel import DEFAULT_TIMEOUT_S, NO_SERVER_HINT, SERVER_VARIABLE, TlsFiles, default_target
from clients.client import VisionClient
from clients.errors import ClientError, InputError, VisionError
from clients.formatting import Output
from clients.version import ninefold_version
from contract.names import ALIGN, CAPTION, CLASSIFY, DETECT, EXPLAIN, GENERATE, WARP

PROG = "ninefold"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Stage:
    """A subcommand owned by another stage: its module has `main(argv) -> int`."""

    module: str
    help: str
    extra: str
    """The pyproject extra that installs what the module imports."""


STAGES = {
    "export": Stage("export.__main__", "train or load the families and export them into a model repository", "export"),
    "serve": Stage("serving.__main__", "run the gRPC server on a model repository", "cpu"),
    "bench": Stage("clients.bench", "measure the server under load", "bench"),
}


@dataclass(frozen=True)
class ImageFailure:
    """One image's request failed for a reason of its own; the command goes on with the next image."""

    message: str


Handler = Callable[[VisionClient, argparse.Namespace], Iterator[Output | ImageFailure]]
"""A subcommand: sends its request(s), yields what to print for each, as soon as it is answered."""

#: Server answers about one image (not an image, too many pixels); any other code stops the command.
_IMAGE_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
#: Codes that may mean nothing answers at --server at all (then the message says how to start one).
_NO_ANSWER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (try --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in STAGES:
        return _run_stage(args_list[0], args_list[1:])
    args = build_parser().parse_args(args_list)
    failed_images = 0
    try:
        with VisionClient(args.server, timeout=args.timeout, tls=_tls(args)) as client:
            try:
                for outcome in args.handler(client, args):
                    if isinstance(outcome, ImageFailure):
                        failed_images += 1
                        _fail(outcome.message)
                    else:
                        print(json.dumps(outcome.json) if args.json else outcome.text, flush=True)
            except VisionError as error:
                return _fail(_explain(error, client, args))
    except (ClientError, OSError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if failed_images else 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; defaults that come from the environment are read now, not at import."""
    parser = OneLineParser(prog=PROG, description="Client of the ninefold vision server, and its other stages.")
    parser.add_argument("--version", action="version", version=f"{PROG} {ninefold_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    connection = OneLineParser(add_help=False)
    connection.add_argument(
        "--server",
        default=default_target(os.environ),
        help="gRPC target: HOST:PORT, or dns:///SERVICE.NAMESPACE.svc.cluster.local:8001 for a headless "
        f"Service (round robin over its pods); env {SERVER_VARIABLE} (default: %(default)s)",
    )
    connection.add_argument(
        "--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, help="deadline of each call, seconds"
    )
    connection.add_argument("--json", action="store_true", help="print one JSON object per request")
    connection.add_argument("--tls", action="store_true", help="connect with TLS (implied by the --tls-* files)")
    connection.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate (default: system)")
    connection.add_argument("--tls-cert", type=Path, help="PEM client certificate, for a server requiring mutual TLS")
    connection.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    model = OneLineParser(add_help=False, parents=[connection])
    model.add_argument("--model", default="", help="model name (default: the task's default model)")
    model.add_argument("--version", type=_non_negative_int, default=0, help="model version (0 = newest ready)")
    images = OneLineParser(add_help=False, parents=[model])
    images.add_argument("images", nargs="+", metavar="IMAGE", help="image file (JPEG, PNG or WebP)")

    def task(name: str, help_text: str, handler: Handler, parents: list) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=parents)
        sub.set_defaults(handler=handler)
        return sub

    classify = task(CLASSIFY, "top-k labels of each image", _each_image(_classify), [images])
    classify.add_argument("--top-k", type=_non_negative_int, default=0, help="labels per image (0 = server's 5)")
    classify.add_argument(
        "--crops",
        type=_non_negative_int,
        default=0,
        help="test-time crops per image, softmax averaged: 1, 5 (corners + centre) or 10 (and flips) (default: 1)",
    )
    detect = task(DETECT, "objects in each image: label, score, box", _each_image(_detect), [images])
    detect.add_argument("--threshold", type=_unit_float, default=0.0, help="minimum score in [0, 1] (0 = server's 0.5)")
    detect.add_argument("--max-detections", type=_non_negative_int, default=0, help="per image (0 = all)")
    caption = task(CAPTION, "a sentence describing each image", _each_image(_caption), [images])
    caption.add_argument("--beam-size", type=_non_negative_int, default=0, help="beam search width (0/1 = greedy)")
    caption.add_argument("--max-length", type=_non_negative_int, default=0, help="tokens (0 = model's maximum)")
    warp_help = "the spatial transformer's warped image and its theta (affine, projective or tps)"
    warp = task(WARP, warp_help, _each_image(_warp), [images])
    warp.add_argument("--out", type=Path, default=Path("."), help="folder for the warped PNGs (default: .)")
    align = task(ALIGN, "rank sentences for an image, each word with its best region", _align, [model])
    align.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG or WebP)")
    align.add_argument("sentences", nargs="+", metavar="SENTENCE", help="a sentence to score against the image")
    explain = task(
        EXPLAIN,
        "DeconvNet projections of a layer's strongest channels (Zeiler & Fergus)",
        _each_image(_explain_image),
        [images],
    )
    explain.add_argument("--layer", default="", help="layer name (conv1..) or 1-based index (default: the last)")
    explain.add_argument("--top-k", type=_non_negative_int, default=0, help="channels per image (0 = server's 9)")
    explain.add_argument("--out", type=Path, required=True, help="folder for the projection PNGs")
    explained = explain.add_mutually_exclusive_group()
    explained.add_argument(
        "--class", dest="class_label", metavar="LABEL", help="rank channels by their contribution to this class's score"
    )
    explained.add_argument("--class-index", type=_non_negative_int, metavar="N", help="the same, by class index")
    generate = task(GENERATE, "draw images from the generator", _generate, [model])
    generate.add_argument("--count", type=_non_negative_int, default=4, help="images to draw (default: 4)")
    generate.add_argument("--seed", type=_non_negative_int, default=0, help="same seed, same images")
    generate.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    models = task("models", "the server's models, versions, tasks and readiness", _models, [connection])
    models.add_argument("--task", default="", help="only models serving this task (classify, detect, ...)")
    for name, stage in STAGES.items():
        commands.add_parser(name, help=f"{stage.help} (see `{PROG} {name} --help`)", add_help=False)
    return parser


def _classify(client: VisionClient, image: str, args: argparse.Namespace) -> Output:
    answer = client.classify(image, model=args.model, version=args.version, top_k=args.top_k, crops=args.crops)
    return formatting.classification(image, answer)


def _detect(client: VisionClient, image: str, args: argparse.Namespace) -> Output:
    answer = client.detect(
        image,
        model=args.model,
        version=args.version,
        score_threshold=args.threshold,
        max_detections=args.max_detections,
    )
    return formatting.detections(image, answer)


def _caption(client: VisionClient, image: str, args: argparse.Namespace) -> Output:
    answer = client.caption(
        image, model=args.model, version=args.version, beam_size=args.beam_size, max_length=args.max_length
    )
    return formatting.caption(image, answer)


def _warp(client: VisionClient, image: str, args: argparse.Namespace) -> Output:
    answer = client.warp(image, model=args.model, version=args.version)
    path = _write(args.out / f"{Path(image).stem}_warped.png", answer.results[0].png)
    return formatting.warp(image, answer, str(path))


def _explain_image(client: VisionClient, image: str, args: argparse.Namespace) -> Output:
    explained = args.class_label if args.class_index is None else args.class_index
    answer = client.explain(
        image,
        layer=args.layer,
        top_k=args.top_k,
        explained_class=explained,
        model=args.model,
        version=args.version,
    )
    (result,) = answer.results
    paths = [
        str(_write(args.out / f"{Path(image).stem}_{result.layer}_channel{c.channel:03d}.png", c.png))
        for c in result.channels
    ]
    return formatting.explanation(image, answer, paths)


def _each_image(ask: Callable[[VisionClient, str, argparse.Namespace], Output]) -> Handler:
    """One request per IMAGE argument, answered (and printed) in order; an image that fails on its
    own is reported by its file name and the next one is still sent."""

    def handler(client: VisionClient, args: argparse.Namespace) -> Iterator[Output | ImageFailure]:
        for image in args.images:
            try:
                yield ask(client, image, args)
            except InputError as error:  # the client names the file itself
                yield ImageFailure(str(error))
            except VisionError as error:
                if error.code not in _IMAGE_CODES:
                    raise
                yield ImageFailure(f"{image}: {error}")

    return handler


def _align(client: VisionClient, args: argparse.Namespace) -> Iterator[Output]:
    answer = client.align(args.image, args.sentences, model=args.model, version=args.version)
    yield formatting.alignment(args.image, answer)


def _generate(client: VisionClient, args: argparse.Namespace) -> Iterator[Output]:
    answer = client.generate(args.count, seed=args.seed, model=args.model, version=args.version)
    paths = [
        str(_write(args.out / f"{answer.model.name}_seed{args.seed}_{i:03d}.png", image.png))
        for i, image in enumerate(answer.results)
    ]
    yield formatting.generated(answer, paths)


def _models(client: VisionClient, args: argparse.Namespace) -> Iterator[Output]:
    infos = client.list_models(args.task)
    if args.task and not infos:  # the server is the authority on task names: ask it which it serves
        served = sorted({info.task for info in client.list_models() if info.task})
        tasks = ", ".join(served) or "none"
        raise InputError(f"--task {args.task!r}: no model serves it; this server's tasks: {tasks}")
    yield formatting.models(infos)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    files = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    return files if args.tls or files != TlsFiles() else None


def _run_stage(name: str, argv: list[str]) -> int:
    stage = STAGES[name]
    try:
        module = importlib.import_module(stage.module)
    except ImportError as error:
        return _fail(
            f"`{PROG} {name}` cannot start: {error} (it needs the `{stage.extra}` extra: "
            f"pip install 'ninefold[{stage.extra}]')"
        )
    stage_main = getattr(module, "main", None)
    if stage_main is None:
        return _fail(f"`{PROG} {name}` is not available: {stage.module} has no main(argv)")
    return int(stage_main(argv) or 0)


def _explain(error: VisionError, client: VisionClient, args: argparse.Namespace) -> str:
    """The error's line, and what to do about it when nothing answers at --server at all."""
    if error.code in _NO_ANSWER_CODES and not client.can_connect():
        return f"no ninefold server answers at --server {args.server} ({error}); {NO_SERVER_HINT}"
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{error} (the server at {args.server} took longer than --timeout {args.timeout:g} s)"
    return str(error)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_FAILURE


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
