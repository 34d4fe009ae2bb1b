"""Task post-processing on hand-made arrays: top-k, box rescaling, beam search on a tiny ONNX decoder."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from contract.caption_decoding import DecoderState, DecoderStep, SearchSettings, beam_search, decoder_step
from contract.multicrop import crop_views
from contract.preprocessing import Placement, placement
from serving.deferred import DeferredRows
from serving.errors import InvalidArgument
from serving.images import Preprocessing, normalise
from serving.tasks.classify import checked_crop_views, classifications, cropped, softmax_top_k
from serving.tasks.common import ImageSize
from serving.tasks.detect import DetectionOptions, image_sizes, select_detections, to_original_pixels
from serving.tasks.generate import latents_from_seed, latents_from_values, png_images
from serving.tasks.warp import warp_results

# ------------------------------------------------------------------ classify


def test_top_k_is_sorted_softmax() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0], [0.0, 0.5, 5.0, -1.0]], np.float32)
    best = softmax_top_k(logits, 2)
    np.testing.assert_array_equal(best.indices, [[1, 2], [2, 1]])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(best.probabilities, [[probabilities[0, 1], probabilities[0, 2]],
                                                    [probabilities[1, 2], probabilities[1, 1]]], rtol=1e-6)


def test_top_k_is_capped_at_the_class_count_and_survives_large_logits() -> None:
    logits = np.array([[1000.0, 999.0, 998.0]], np.float32)
    best = softmax_top_k(logits, 10)
    assert best.indices.tolist() == [[0, 1, 2]]
    assert np.isfinite(best.probabilities).all() and best.probabilities.sum() == pytest.approx(1.0)


def test_crops_of_deferred_rows_decode_each_image_once() -> None:
    decoded = []

    def writer(value: float):
        def write(row: np.ndarray) -> None:
            decoded.append(value)
            row[...] = value + np.arange(row.size, dtype=np.float32).reshape(row.shape)

        return write

    rows = DeferredRows((3, 5, 7), np.dtype(np.float32), (writer(0.0), writer(1000.0)))
    views = crop_views(10, (4, 6))
    crops = cropped(rows, views)
    assert crops.shape == (20, 3, 4, 6)
    expected = cropped(rows.materialise(), views)
    decoded.clear()
    np.testing.assert_array_equal(crops.materialise(), expected)
    assert decoded == [0.0, 1000.0]


@pytest.mark.parametrize("crops", [0, 2, 3, 4, 11])
def test_other_crop_counts_are_invalid_arguments_naming_them(crops: int) -> None:
    with pytest.raises(InvalidArgument, match=rf"crops {crops} is not one of 1, 5 or 10 \(0 means 1\)"):
        checked_crop_views(crops, (4, 4))


def test_classifications_carry_labels_and_fall_back_to_the_index() -> None:
    logits = np.array([[0.0, 2.0, 1.0]], np.float32)
    (result,) = classifications(logits, ("cat", "dog"), 3)
    assert [(p.label, p.index) for p in result.predictions] == [("dog", 1), ("2", 2), ("cat", 0)]


# ------------------------------------------------------------------ detect


def square(height: int, width: int) -> Preprocessing:
    return Preprocessing(size=(height, width), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def placements(preprocessing: Preprocessing, sizes: list[ImageSize]) -> list[Placement]:
    return [placement((size.height, size.width), preprocessing) for size in sizes]


def test_boxes_scale_back_per_image_and_axis() -> None:
    boxes = np.array([[[10, 20, 30, 40]], [[10, 20, 30, 40]]], np.float32)  # input grid 64 (H) x 128 (W)
    sizes = [ImageSize(height=64, width=128), ImageSize(height=640, width=256)]
    scaled = to_original_pixels(boxes, placements(square(64, 128), sizes))
    np.testing.assert_allclose(scaled[0, 0], [10, 20, 30, 40])
    np.testing.assert_allclose(scaled[1, 0], [20, 200, 60, 400])


def test_letterboxed_boxes_map_back_by_the_resize_ratio_and_clip_to_the_image() -> None:
    """A 300 x 600 image in a 128 canvas (shorter side 64, longer <= 128) fills 64 x 128 of it."""
    letterbox = Preprocessing(
        size=(128, 128), mean=(0.5,) * 3, std=(0.25,) * 3, mode="letterbox", resize=64, max_size=128, antialias=False
    )
    where = placements(letterbox, [ImageSize(height=300, width=600)])
    np.testing.assert_array_equal(image_sizes(where), [[64, 128]])
    boxes = np.array([[[10, 20, 30, 100]]], np.float32)  # y2 = 100 lies in the padding below the image
    expected = [10 * 600 / 128, 20 * 300 / 64, 30 * 600 / 128, 300]
    np.testing.assert_allclose(to_original_pixels(boxes, where)[0, 0], expected, rtol=1e-6)


def detector_outputs() -> dict[str, np.ndarray]:
    """Two images, K = 4 rows each; image 0 has 3 real detections, image 1 has 1 (rest padding)."""
    return {
        "boxes": np.array(
            [[[0, 0, 8, 8], [8, 8, 16, 16], [4, 4, 12, 12], [1, 1, 2, 2]],
             [[0, 0, 32, 32], [9, 9, 9, 9], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.6, 0.9, 0.3, 0.99], [0.8, 0.95, 0, 0]], np.float32),
        "labels": np.array([[1, 0, 1, 1], [2, 2, 0, 0]], np.int64),
        "num_detections": np.array([[3], [1]], np.int64),
    }


def test_detections_drop_padding_threshold_and_sort() -> None:
    sizes = [ImageSize(height=16, width=16), ImageSize(height=64, width=32)]
    where = placements(square(32, 32), sizes)
    results = select_detections(detector_outputs(), where, ("a", "b", "c"), DetectionOptions(0.5, 0))
    first, second = results
    assert [(d.label, round(d.score, 2)) for d in first.detections] == [("a", 0.9), ("b", 0.6)]
    assert (first.detections[0].box.x1, first.detections[0].box.y2) == (4.0, 8.0)  # 16/32 scale
    assert [(d.label, d.box.y2) for d in second.detections] == [("c", 64.0)]  # padding row 0.95 dropped


def test_max_detections_and_threshold_options() -> None:
    sizes = [ImageSize(height=32, width=32)] * 2
    where = placements(square(32, 32), sizes)
    first, _ = select_detections(detector_outputs(), where, ("a", "b", "c"), DetectionOptions(0.1, 2))
    assert [round(d.score, 2) for d in first.detections] == [0.9, 0.6]


# ------------------------------------------------------------------ caption beam search

START, END = 0, 1
VOCABULARY = 4
STATE = 2


def markov_decoder() -> onnx.ModelProto:
    """A real decoder-step graph: logprobs = log_softmax(table[token] + h @ bias); state passes through.

    The table makes greedy decoding miss the best caption: "a" is the likelier first word,
    but "b" then ends far more surely.
    """
    probabilities = np.array(
        [[1e-6, 1e-6, 0.6, 0.4], [1e-6, 1.0, 1e-6, 1e-6], [1e-6, 0.3, 0.36, 0.34], [1e-6, 0.9, 0.05, 0.05]]
    )
    table = numpy_helper.from_array(np.log(probabilities / probabilities.sum(1, keepdims=True)).astype(np.float32),
                                    "table")
    bias = numpy_helper.from_array(np.array([[0, 3, 0, 0], [0, 0, -3, 3]], np.float32), "bias")
    nodes = [
        helper.make_node("Squeeze", ["token", "axis"], ["flat"]),
        helper.make_node("Gather", ["table", "flat"], ["rows"]),
        helper.make_node("MatMul", ["h", "bias"], ["shift"]),
        helper.make_node("Add", ["rows", "shift"], ["scores"]),
        helper.make_node("LogSoftmax", ["scores"], ["logprobs"], axis=1),
        helper.make_node("Identity", ["h"], ["h_out"]),
        helper.make_node("Identity", ["c"], ["c_out"]),
    ]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    graph = helper.make_graph(
        nodes,
        "markov_decoder",
        [helper.make_tensor_value_info("token", TensorProto.INT64, ["B", 1]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", STATE]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, ["B", STATE])],
        [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["B", VOCABULARY]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", STATE]),
         helper.make_tensor_value_info("c_out", TensorProto.FLOAT, ["B", STATE])],
        [table, bias, axis],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def decoder() -> ort.InferenceSession:
    return ort.InferenceSession(markov_decoder().SerializeToString(), providers=["CPUExecutionProvider"])


def steps_of(session: ort.InferenceSession, batch_sizes: list[int]) -> DecoderStep:
    async def run_session(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch_sizes.append(inputs["token"].shape[0])
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(inputs)), strict=True))

    return decoder_step(run_session)


def exact_best(session: ort.InferenceSession, h: np.ndarray, max_words: int) -> tuple[tuple[int, ...], float]:
    """Score every caption of up to `max_words` words (then the end token) by brute force."""

    def logprobs_after(prefix: tuple[int, ...]) -> np.ndarray:
        token = np.array([[prefix[-1] if prefix else START]], np.int64)
        return session.run(None, {"token": token, "h": h[None], "c": h[None]})[0][0]

    best: tuple[tuple[int, ...], float] = ((), -np.inf)
    words = [t for t in range(VOCABULARY) if t != END]
    for length in range(max_words + 1):
        for caption in itertools.product(words, repeat=length):
            score = sum(float(logprobs_after(caption[:i])[caption[i]]) for i in range(length))
            score += float(logprobs_after(caption)[END])
            if score > best[1]:
                best = (caption, score)
    return best


def run(coroutine):
    import asyncio

    return asyncio.run(coroutine)


def test_greedy_takes_the_likeliest_word_each_step(decoder: ort.InferenceSession) -> None:
    h = np.zeros((1, STATE), np.float32)
    batch_sizes: list[int] = []
    (sequence,) = run(beam_search(steps_of(decoder, batch_sizes), DecoderState(h, h),
                                  SearchSettings(START, END, beam_size=1, max_length=2)))
    assert sequence.tokens == (2, 2)  # "a" "a", then the end is forced
    expected = np.log(0.6) + np.log(0.36) + np.log(0.3)
    assert sequence.log_probability == pytest.approx(expected, abs=1e-4)
    assert batch_sizes == [1, 1, 1]


def test_beam_search_finds_the_exact_best_caption_per_image(decoder: ort.InferenceSession) -> None:
    h = np.array([[0, 0], [0, 1], [0, -1]], np.float32)  # three images with different word biases
    batch_sizes: list[int] = []
    sequences = run(beam_search(steps_of(decoder, batch_sizes), DecoderState(h, h.copy()),
                                SearchSettings(START, END, beam_size=16, max_length=2)))
    for image, sequence in enumerate(sequences):
        tokens, score = exact_best(decoder, h[image], 2)
        assert sequence.tokens == tokens
        assert sequence.log_probability == pytest.approx(score, abs=1e-4)
    assert sequences[0].tokens == (3,)  # "b" then end beats greedy's "a ..."
    assert batch_sizes[0] == 3  # the first step runs one row per image; then the beams go as one batch
    assert all(size % 4 == 0 or size == 3 for size in batch_sizes[1:])


def test_finished_images_leave_the_batch(decoder: ort.InferenceSession) -> None:
    h = np.array([[3, 0], [0, 0]], np.float32)  # image 0 favours the end token, image 1 runs on
    batch_sizes: list[int] = []
    run(beam_search(steps_of(decoder, batch_sizes), DecoderState(h, h.copy()),
                    SearchSettings(START, END, beam_size=1, max_length=6)))
    assert batch_sizes == [2, 2, 1, 1, 1, 1, 1]  # image 0 ends after its second word; 6 words + forced end


# ------------------------------------------------------------------ generate and warp


def test_same_seed_same_latents_and_different_seeds_differ() -> None:
    first = latents_from_seed(7, 3, 16)
    assert first.shape == (3, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first, latents_from_seed(7, 3, 16))
    assert not np.array_equal(first, latents_from_seed(8, 3, 16))


def test_explicit_latents_are_checked_against_the_latent_size() -> None:
    np.testing.assert_array_equal(latents_from_values([[1.0, 2.0], [3.0, 4.0]], 2), [[1, 2], [3, 4]])
    with pytest.raises(InvalidArgument, match="latent 1 has 3 values; this model takes exactly 2"):
        latents_from_values([[1.0, 2.0], [1.0, 2.0, 3.0]], 2)
    with pytest.raises(InvalidArgument, match="latent 0 contains NaN"):
        latents_from_values([[float("nan"), 2.0]], 2)


def test_generated_images_map_the_output_range_to_png() -> None:
    batch = np.stack([np.full((3, 4, 5), -1.0, np.float32), np.full((3, 4, 5), 1.0, np.float32)])
    dark, bright = png_images(batch, (-1.0, 1.0))
    assert (dark.height, dark.width) == (4, 5)
    assert np.asarray(Image.open(io.BytesIO(dark.png))).max() == 0
    assert np.asarray(Image.open(io.BytesIO(bright.png))).min() == 255


def test_warp_results_invert_the_normalisation() -> None:
    preprocessing = Preprocessing(size=(4, 6), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    picture = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    outputs = {
        "warped": normalise([picture], preprocessing),
        "theta": np.array([[[1, 0, 0.5], [0, 1, -0.5]]], np.float32),
        "logits": np.array([[0.0, 4.0]], np.float32),
    }
    (result,) = warp_results(outputs, preprocessing, ("square", "circle"), "affine")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(result.png))), picture)
    assert result.theta == (1.0, 0.0, 0.5, 0.0, 1.0, -0.5) and result.transform == "affine"
    assert result.label == "circle" and result.score == pytest.approx(1 / (1 + np.exp(-4.0)), rel=1e-5)


def test_warp_results_of_a_headless_tps_model_flatten_theta_and_carry_no_label() -> None:
    preprocessing = Preprocessing(size=(2, 2), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    theta = np.arange(2 * 9 * 2, dtype=np.float32).reshape(2, 9, 2)
    outputs = {"warped": np.zeros((2, 3, 2, 2), np.float32), "theta": theta}
    results = warp_results(outputs, preprocessing, (), "tps")
    assert [r.theta for r in results] == [tuple(row.reshape(-1).tolist()) for row in theta]
    assert {(r.transform, r.label, r.score) for r in results} == {("tps", "", 0.0)}
