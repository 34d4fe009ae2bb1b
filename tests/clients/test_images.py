"""Image inputs -> proto Images: what travels encoded, what travels raw, and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.errors import InputError
from clients.images import to_proto_images


def test_file_path_and_bytes_travel_encoded_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    path.write_bytes(b"\x89PNG fake but opaque to the client")
    by_str, by_path, by_bytes = to_proto_images([str(path), path, path.read_bytes()])
    assert by_str.encoded == by_path.encoded == by_bytes.encoded == path.read_bytes()
    assert by_str.WhichOneof("data") == "encoded"


def test_rgb_array_travels_raw_with_its_shape() -> None:
    array = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    (image,) = to_proto_images(array)
    assert image.WhichOneof("data") == "raw"
    assert (image.raw.height, image.raw.width, image.raw.channels) == (4, 5, 3)
    assert np.array_equal(np.frombuffer(image.raw.pixels, np.uint8).reshape(4, 5, 3), array)


def test_gray_array_gets_one_channel_and_strided_views_are_copied_in_order() -> None:
    base = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    view = base[:, ::2]  # not contiguous
    (image,) = to_proto_images(view)
    assert (image.raw.height, image.raw.width, image.raw.channels) == (6, 4, 1)
    assert image.raw.pixels == view.copy().tobytes()


def test_four_dimensional_array_is_a_batch_and_mixed_lists_keep_order(tmp_path: Path) -> None:
    batch = np.zeros((3, 2, 2, 4), dtype=np.uint8)
    assert len(to_proto_images(batch)) == 3
    images = to_proto_images([b"first", np.zeros((2, 2, 3), np.uint8), b"third"])
    assert [image.WhichOneof("data") for image in images] == ["encoded", "raw", "encoded"]
    assert images[2].encoded == b"third"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "channels 1, 3 or 4"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (b"", "no bytes"),
        (12, "unsupported image type int"),
        ([], "no images given"),
    ],
)
def test_bad_inputs_raise_input_error_naming_the_problem(bad: object, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        to_proto_images(bad)  # type: ignore[arg-type]


def test_missing_file_names_the_file_and_its_position(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError) as caught:
        to_proto_images([b"ok", missing])
    assert "image 2 of 2" in str(caught.value)
    assert str(missing) in str(caught.value)
    assert "No such file" in str(caught.value)
