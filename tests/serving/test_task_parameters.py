"""Task parameters from config.pbtxt (docs/MODEL_REPOSITORY.md): parsed, or refused with a clear reason."""

from __future__ import annotations

import pytest

from serving.errors import Unavailable
from serving.images import Preprocessing
from serving.tasks.common import preprocessing_from

GOOD = '{"size": [64, 48], "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.1]}'


def test_preprocessing_is_parsed() -> None:
    parsed = preprocessing_from({"preprocessing": GOOD}, "m")
    assert parsed == Preprocessing(size=(64, 48), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "model m has no 'preprocessing' parameter"),
        ({"preprocessing": "{size: 64"}, "model m: preprocessing is not valid JSON"),
        ({"preprocessing": "[1, 2]"}, "model m: preprocessing must be a JSON object"),
        ({"preprocessing": GOOD.replace('"std": [0.25, 0.2, 0.1]', '"std": [0.25, 0, 0.1]')}, "std positive"),
        ({"preprocessing": GOOD.replace('"mean": [0.5, 0.4, 0.3]', '"mean": [0.5]')}, "3 values each"),
        ({"preprocessing": GOOD.replace('"size": [64, 48]', '"size": [64]')}, "must hold"),
        ({"preprocessing": GOOD[:-1] + ', "mode": "stretch"}'}, "mode 'stretch' is not one of"),
        ({"preprocessing": GOOD[:-1] + ', "mode": "shorter_side", "resize": 32}'}, "resize 32 must be at least"),
    ],
)
def test_broken_preprocessing_makes_the_model_unavailable(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(Unavailable, match=message):
        preprocessing_from(parameters, "m")
