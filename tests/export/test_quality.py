"""Quality bars: the main figure and every gate must pass; a miss is described with its figure and bar."""

from __future__ import annotations

from export.families.base import Bar, Quality


def test_a_model_that_clears_the_main_figure_but_misses_a_gate_fails() -> None:
    quality = Quality(
        metric="bleu4",
        value=0.71,
        threshold=0.60,
        gates=(Bar("texture_accuracy", 0.20, 0.90), Bar("colour_accuracy", 0.99, 0.90)),
    )
    assert not quality.passed
    assert quality.misses() == ("texture_accuracy 0.200 < 0.9",)


def test_every_bar_cleared_passes_and_the_main_figure_comes_first() -> None:
    quality = Quality(metric="top1", value=0.98, threshold=0.95, gates=(Bar("loss", 0.1, 0.5, higher_is_better=False),))
    assert quality.passed and quality.misses() == ()
    assert [bar.describe() for bar in quality.bars] == ["top1 0.980 >= 0.95", "loss 0.100 <= 0.5"]


def test_lower_is_better_misses_above_its_bar() -> None:
    quality = Quality(metric="error", value=0.3, threshold=0.2, higher_is_better=False)
    assert not quality.passed and quality.misses() == ("error 0.300 > 0.2",)
