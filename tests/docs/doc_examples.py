"""Collect the shell and Python examples of README.md and docs/*.md, for tests/docs/test_doc_examples.py.

Convention (README.md, "Other make targets"): every ```bash (or sh, shell) and
```python block is an example that must run as written. A block that cannot run here (a GPU, a
cluster, Docker, minutes of training) carries this exact line directly before its opening fence:

    <!-- example: not run (REASON) -->

Output and configuration go in ```text, ```console, ```yaml, ```protobuf or a bare ``` block,
which are never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
SKIP_MARKER = re.compile(r"^\s*<!-- example: not run \((?P<reason>.*)\) -->\s*$")
ANY_MARKER = re.compile(r"^\s*<!--\s*example\b")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Example:
    """One fenced block: where it is (`doc:line` of its opening fence), how to run it, or why not."""

    doc: str
    line: int
    language: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass(frozen=True)
class MisplacedMarker:
    """A line that looks like the skip marker but is not one, or is not directly before a fence."""

    where: str
    problem: str


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def examples(paths: list[Path], root: Path = ROOT) -> tuple[list[Example], list[MisplacedMarker]]:
    """Every runnable-language block of `paths`, in order, and every marker that marks nothing."""
    found: list[Example] = []
    misplaced: list[MisplacedMarker] = []
    for path in paths:
        doc = path.relative_to(root).as_posix()
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            line = lines[index]
            if ANY_MARKER.search(line):
                _check_marker(lines, index, f"{doc}:{index + 1}", misplaced)
            opening = FENCE.match(line)
            if not opening:
                index += 1
                continue
            end = _closing_fence(lines, index)
            language = RUN_LANGUAGES.get(opening["language"].lower())
            if language:
                marker = SKIP_MARKER.match(lines[index - 1]) if index else None
                indent = len(opening["indent"])
                code = "\n".join(text[indent:] if text[:indent].isspace() else text for text in lines[index + 1 : end])
                reason = marker["reason"].strip() if marker else None
                found.append(Example(doc, index + 1, language, code + "\n", reason))
            index = end + 1
    return found, misplaced


def _closing_fence(lines: list[str], opening: int) -> int:
    for index in range(opening + 1, len(lines)):
        if lines[index].strip() == "```":
            return index
    return len(lines)


def _check_marker(lines: list[str], index: int, where: str, misplaced: list[MisplacedMarker]) -> None:
    marker = SKIP_MARKER.match(lines[index])
    if not marker:
        misplaced.append(MisplacedMarker(where, "write it exactly `<!-- example: not run (REASON) -->`"))
    elif not marker["reason"].strip():
        misplaced.append(MisplacedMarker(where, "say why the example cannot run: `not run (REASON)`"))
    elif index + 1 >= len(lines) or not FENCE.match(lines[index + 1]):
        misplaced.append(MisplacedMarker(where, "the marker must be the line directly before the opening fence"))
