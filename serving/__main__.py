"""`python -m serving --model-repository DIR` (also `ninefold serve`): run the inference server."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from serving.api import available_adapters
from serving.config import load_config
from serving.server import serve


def main(argv: list[str] | None = None) -> int:
    """Parse flags and NINEFOLD_* variables, run the server until SIGTERM/SIGINT; returns the exit code."""
    hooks = [adapter.add_arguments for adapter in available_adapters() if hasattr(adapter, "add_arguments")]
    config = load_config(argv, os.environ, hooks)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not config.model_repository.is_dir():
        print(f"ninefold serve: model repository '{config.model_repository}' is not a directory", file=sys.stderr)
        return 2
    return run_event_loop(serve(config), config.event_loop)


def run_event_loop(main_coroutine: Coroutine[Any, Any, int], choice: str) -> int:
    """Run the server on uvloop (about 0.1 ms less per request at concurrency 1 here) or asyncio's loop."""
    if choice == "uvloop":
        import uvloop

        return uvloop.run(main_coroutine)
    return asyncio.run(main_coroutine)


if __name__ == "__main__":
    sys.exit(main())
