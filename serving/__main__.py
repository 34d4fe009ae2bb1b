"""`python -m serving --model-repository DIR` (also `ninefold serve`): run the inference server."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

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
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
