"""Models written the way a user would write them, for tests of ``--weights`` files that are not the
project's own layout or words."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from export.families.captioner import SMALL, Captioner, Vocabulary, synthetic_captions, tokenize, train_captioner


def sequential_zfnet(widths: tuple[int, int, int, int, int], fc_width: int, classes: int) -> nn.Sequential:
    """A ZF Net at 224 written as one plain nn.Sequential (the layers docs/EXPORT.md lists)."""
    c1, c2, c3, c4, c5 = widths
    return nn.Sequential(
        nn.Conv2d(3, c1, 7, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(c1, c2, 5, 2, 0), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(c2, c3, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 0),
        nn.Flatten(), nn.Dropout(),
        nn.Linear(c5 * 6 * 6, fc_width), nn.ReLU(), nn.Dropout(),
        nn.Linear(fc_width, fc_width), nn.ReLU(),
        nn.Linear(fc_width, classes),
    )  # fmt: skip


def other_words(caption: str) -> str:
    """A caption in words no synthetic caption has: each word reversed, articles dropped."""
    return " ".join(word[::-1] for word in tokenize(caption) if word != "a")


def trained_captioner(steps: int = 150) -> Captioner:
    """The project's training loop on `other_words` captions, with a vocabulary and sizes of its own."""
    vocabulary = Vocabulary.build(other_words(caption) for caption in synthetic_captions())
    config = replace(
        SMALL,
        vocabulary=vocabulary.tokens,
        max_length=9,
        image_size=32,
        widths=(8, 16),
        embed_dim=16,
        hidden_size=32,
        image_code=8,
        train_steps=steps,
        batch_size=16,
        train_scenes=300,
    )
    return train_captioner(Captioner(config, vocabulary), config, seed=0, caption=lambda s: other_words(s.caption))
