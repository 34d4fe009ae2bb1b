"""What the CLI prints for one answer: a JSON object (`--json`) and a readable line.

JSON shapes are the CLI's contract (one object per request):
classify `{"model", "predictions": [{"label", "score"}]}`, detect `{"model", "detections":
[{"label", "score", "box": [x1, y1, x2, y2]}]}`, caption `{"model", "caption"}`,
warp `{"model", "transform", "theta", "image_path"}`, generate `{"model", "image_paths"}`, align `{"model", "sentences":
[{"sentence", "score", "words": [{"word", "region", "box"}], "ignored_words"}]}` (best first), explain
`{"model", "layer", "channels": [{"channel", "activation", "receptive_field": [x1, y1, x2, y2], "image_path"}]}`,
with `--class`: also `"class": {"label", "index", "score"}` and each channel's `"contribution"`.
`model` is the answering model's name; numbers are the float32 values the server sent,
written with the fewest digits that read back as the same float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clients.results import (
    Alignment,
    Answer,
    Caption,
    Classification,
    Detections,
    Explanation,
    GeneratedImage,
    ModelInfo,
    Warp,
)


@dataclass(frozen=True)
class Output:
    """One printed record: `json` for --json (one line), `text` for people."""

    json: dict[str, Any]
    text: str


def classification(image: str, answer: Answer[Classification]) -> Output:
    (result,) = answer.results
    predictions = [{"label": p.label, "score": _float(p.score)} for p in result.predictions]
    ranked = ", ".join(f"{p.label} {p.score:.3f}" for p in result.predictions)
    return Output(
        json={"model": answer.model.name, "predictions": predictions},
        text=f"{image}: {ranked or 'no predictions'} ({answer.model})",
    )


def detections(image: str, answer: Answer[Detections]) -> Output:
    (result,) = answer.results
    found = [{"label": d.label, "score": _float(d.score), "box": [_float(v) for v in d.box]} for d in result.detections]
    listed = "; ".join(
        f"{d.label} {d.score:.3f} at [{', '.join(f'{v:.1f}' for v in d.box)}]" for d in result.detections
    )
    return Output(
        json={"model": answer.model.name, "detections": found},
        text=f"{image}: {listed or 'no detections'} ({answer.model})",
    )


def caption(image: str, answer: Answer[Caption]) -> Output:
    (result,) = answer.results
    return Output(
        json={"model": answer.model.name, "caption": result.text},
        text=f'{image}: "{result.text}" (log p {result.log_probability:.2f}, {answer.model})',
    )


def warp(image: str, answer: Answer[Warp], image_path: str) -> Output:
    (result,) = answer.results
    theta = [[_float(v) for v in row] for row in result.theta]
    rows = "; ".join(" ".join(f"{v:+.3f}" for v in row) for row in result.theta)
    return Output(
        json={"model": answer.model.name, "transform": result.transform, "theta": theta, "image_path": image_path},
        text=f"{image} -> {image_path}: {result.label} {result.score:.3f}, {result.transform} theta [{rows}] "
        f"({answer.model})",
    )


def alignment(image: str, answer: Alignment) -> Output:
    """The sentences ranked for the image, each known word with its region (0 = the whole image)."""
    (result,) = answer.images
    ranked = [
        {
            "sentence": match.text,
            "score": _float(match.score),
            "words": [{"word": w.word, "region": w.region, "box": [_float(v) for v in w.box]} for w in match.words],
            "ignored_words": list(answer.sentences[match.sentence].ignored_words),
        }
        for match in result.sentences
    ]
    lines = [f"{image}: {len(ranked)} sentences, best first ({answer.model})"]
    for match in result.sentences:
        words = " ".join(f"{w.word}@{w.region}" for w in match.words)
        ignored = answer.sentences[match.sentence].ignored_words
        unknown = f" (unknown: {' '.join(ignored)})" if ignored else ""
        lines.append(f'  {match.score:8.3f}  "{match.text}"  [{words}]{unknown}')
    return Output(json={"model": answer.model.name, "sentences": ranked}, text="\n".join(lines))


def explanation(image: str, answer: Answer[Explanation], image_paths: Sequence[str]) -> Output:
    """image_paths: where each channel's projection PNG was written, in the answer's order."""
    (result,) = answer.results
    explained = result.explained_class
    channels = [
        {
            "channel": c.channel,
            "activation": _float(c.activation),
            **({} if explained is None else {"contribution": _float(c.contribution)}),
            "receptive_field": [_float(v) for v in c.receptive_field],
            "image_path": path,
        }
        for c, path in zip(result.channels, image_paths, strict=True)
    ]
    listed = "\n".join(
        f"  channel {c.channel}: activation {c.activation:.3f}"
        + ("" if explained is None else f", contribution {c.contribution:.3f}")
        + f", receptive field [{', '.join(f'{v:g}' for v in c.receptive_field)}] -> {path}"
        for c, path in zip(result.channels, image_paths, strict=True)
    )
    heading = f"{image}: layer {result.layer}, {len(channels)} channels"
    fields: dict[str, Any] = {"model": answer.model.name, "layer": result.layer, "channels": channels}
    if explained is not None:
        heading += f" for class {explained.label} (#{explained.index}, p={explained.score:.3f})"
        fields["class"] = {"label": explained.label, "index": explained.index, "score": _float(explained.score)}
    return Output(json=fields, text=f"{heading} ({answer.model})\n{listed}")


def generated(answer: Answer[GeneratedImage], image_paths: Sequence[str]) -> Output:
    return Output(
        json={"model": answer.model.name, "image_paths": list(image_paths)},
        text="\n".join(f"{path} ({answer.model})" for path in image_paths),
    )


def models(infos: Sequence[ModelInfo]) -> Output:
    rows = [("MODEL", "VERSION", "TASK", "FAMILY", "STATE", "DEFAULT", "BATCH", "INSTANCES")]
    rows += [
        (
            info.name,
            str(info.version),
            info.task or "-",
            info.family or "-",
            "ready" if info.ready else f"not ready: {info.state_reason or 'unknown'}",
            "yes" if info.is_default else "",
            str(info.max_batch_size),
            str(info.instances),
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    return Output(
        json={"models": [asdict(info) for info in infos]},
        text=table,
    )


def _float(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (0.98, not 0.9800000190734863)."""
    return float(str(np.float32(value)))
