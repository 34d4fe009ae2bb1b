"""Is the demo's model repository up to date, and if not, export it.

"Up to date" means: the stamp file the demo wrote after its last export exists, its digest of
the export stage's sources (every export/**/*.py and contract/**/*.py) equals today's, and every model
it lists still has its config.pbtxt and an export_report.json. Any edit to export/ or contract/ therefore
re-exports; a repository exported by hand (no stamp) is exported again once, then reused.

`python -m clients.demo_repository [--model-repository DIR] [--force] [--allow-below-threshold]` (what
`make export` runs) exports and stamps, so that a later `make demo` reuses the result. An export that
fails (a model below its quality or parity bar) stops the demo with the export's own message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from clients.errors import ClientError

STAMP_FILE = ".ninefold-demo-export.json"
EXPORT_SOURCES = tuple(Path(__file__).resolve().parent.parent / name for name in ("export", "contract"))
"""The export package and the contract it runs (the caption decoding its report measures with), siblings of
this one in the source tree and in site-packages alike."""


def export_sources_digest() -> str:
    """sha256 over the relative path and bytes of every Python file of the export and contract packages."""
    digest = hashlib.sha256()
    for root in EXPORT_SOURCES:
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def is_up_to_date(repository: Path) -> bool:
    try:
        stamp = json.loads((repository / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    models = stamp.get("models") if isinstance(stamp, dict) else None
    if not models or stamp.get("export_sources") != export_sources_digest():
        return False
    return all(_is_complete(repository / name) for name in models)


EXPORT_ERROR_PREFIX = "ninefold export: "
"""How `python -m export` starts the line that says why it failed (see export/__main__.py)."""


def ensure_repository(repository: Path, *, force: bool = False, export_arguments: Sequence[str] = ()) -> None:
    """Export the small families into `repository` (child process `python -m export`) unless up to date.

    export_arguments: further `ninefold export` options (e.g. --allow-below-threshold). The export's
    stderr passes through; a failed export raises ClientError carrying the export's own error line.
    """
    if not force and is_up_to_date(repository):
        print(f"reusing the up-to-date model repository {repository}/", flush=True)
        return
    print(f"exporting the small families into {repository}/ (trains them; takes minutes)", flush=True)
    command = [sys.executable, "-m", "export", "--out", str(repository), *export_arguments]
    reasons = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as export:
        assert export.stderr is not None
        for line in export.stderr:
            sys.stderr.write(line)
            if line.startswith(EXPORT_ERROR_PREFIX):
                reasons.append(line[len(EXPORT_ERROR_PREFIX) :].strip())
    if export.returncode != 0:
        why = "; ".join(reasons) or "its output is above"
        raise ClientError(f"the export failed with exit status {export.returncode}: {why}")
    write_stamp(repository)


def write_stamp(repository: Path) -> None:
    """Record that `repository` is what the current export sources produce (after an export)."""
    models = sorted(folder.name for folder in repository.iterdir() if _is_complete(folder))
    if not models:
        raise ClientError(f"{repository}/ holds no complete model folder (config.pbtxt + */export_report.json)")
    stamp = {"export_sources": export_sources_digest(), "models": models}
    (repository / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")


def _is_complete(folder: Path) -> bool:
    return (folder / "config.pbtxt").is_file() and any(folder.glob("*/export_report.json"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.demo_repository",
        description="Export the small families into a repository (unless up to date) and stamp it for the demo.",
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--force", action="store_true", help="export even if the repository is up to date")
    parser.add_argument(
        "--allow-below-threshold",
        action="store_true",
        help="keep models that miss their quality bar (stamped; the server warns when it loads them)",
    )
    args = parser.parse_args(argv)
    try:
        ensure_repository(
            args.model_repository,
            force=args.force,
            export_arguments=["--allow-below-threshold"] if args.allow_below_threshold else [],
        )
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
