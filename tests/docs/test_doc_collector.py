"""The doc-example convention (tests/docs/doc_examples.py): which blocks run, which are marked, and
markers that would silently mark nothing."""

from __future__ import annotations

from pathlib import Path

from tests.docs.doc_examples import documents, examples

DOC = """# A page

```bash
ninefold models
```

<!-- example: not run (needs a GPU (CUDA)) -->
```python
import tensorrt
```

```text
output, never run
```

- a list item with an indented block:

  ```bash
  echo indented
  ```

<!-- example: not run (a cluster) -->

```bash
echo the marker above is one line too far
```
<!-- example: skip this -->
```console
$ ninefold --version
```
"""


def test_run_languages_markers_and_indentation(tmp_path: Path) -> None:
    page = tmp_path / "PAGE.md"
    page.write_text(DOC)
    found, misplaced = examples([page], root=tmp_path)
    assert [(e.where, e.language, e.skip_reason) for e in found] == [
        ("PAGE.md:3", "bash", None),
        ("PAGE.md:8", "python", "needs a GPU (CUDA)"),
        ("PAGE.md:18", "bash", None),
        ("PAGE.md:24", "bash", None),
    ]
    assert found[0].code == "ninefold models\n" and found[2].code == "echo indented\n"
    assert [m.where for m in misplaced] == ["PAGE.md:22", "PAGE.md:27"]
    assert "directly before the opening fence" in misplaced[0].problem
    assert "exactly" in misplaced[1].problem


def test_every_marker_in_the_docs_marks_a_block() -> None:
    found, misplaced = examples(documents())
    assert found, "no bash or python examples found in README.md and docs/*.md"
    assert not misplaced, "\n".join(f"{marker.where}: {marker.problem}" for marker in misplaced)
