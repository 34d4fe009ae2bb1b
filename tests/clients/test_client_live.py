"""The sync and asyncio clients against a real server on loopback (tiny real ONNX models)."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from clients import AsyncVisionClient, InputError, VisionClient, VisionError
from clients.server_process import ServerProcess
from tests.serving.tiny_repository import CLASSIFIER_LABELS, DETECT_SIZE, WARP_THETA

SIDE = 16


def flat_image(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((SIDE, SIDE, 3), rgb, dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess):
    with VisionClient(tiny_server.target) as client:
        yield client


def test_wait_until_ready_returns_for_the_server_and_a_task(client: VisionClient) -> None:
    client.wait_until_ready(timeout=10)
    client.wait_until_ready(timeout=10, service="ninefold.v1.Vision/classify")


def test_classify_keeps_image_order_and_same_answer_for_raw_and_encoded(client: VisionClient) -> None:
    red, blue = flat_image((230, 20, 20)), flat_image((20, 20, 230))
    both = client.classify([red, png(blue)], top_k=2)
    assert both.model.name == "tiny_classify" and both.model.version == 1
    assert len(both.results) == 2
    assert all(len(result.predictions) == 2 for result in both.results)
    assert both.results[0] == client.classify(png(red), top_k=2).results[0]
    assert both.results[1] == client.classify(blue, top_k=2).results[0]
    assert {p.label for result in both.results for p in result.predictions} <= set(CLASSIFIER_LABELS)
    scores = [p.score for p in both.results[0].predictions]
    assert scores == sorted(scores, reverse=True)


def test_detect_boxes_come_back_in_the_original_pixel_grid(client: VisionClient) -> None:
    (result,) = client.detect(flat_image((90, 90, 90)), score_threshold=0.5).results
    # tiny_detect always finds a box (4, 8, 12, 16) in its 32x32 input grid; our image is 16x16.
    scale = SIDE / DETECT_SIZE
    assert [(d.label, d.box) for d in result.detections] == [("square", (4 * scale, 8 * scale, 12 * scale, 16 * scale))]


def test_caption_generate_warp_and_list_models(client: VisionClient) -> None:
    (caption,) = client.caption(flat_image((200, 10, 10)), beam_size=2).results
    assert caption.text and caption.log_probability <= 0
    first, again = client.generate(3, seed=11), client.generate(3, seed=11)
    assert [image.png for image in first.results] == [image.png for image in again.results]
    assert first.results[0].png != client.generate(1, seed=12).results[0].png
    (warp,) = client.warp(flat_image((10, 200, 10))).results
    assert np.allclose(np.ravel(warp.theta), WARP_THETA)
    assert Image.open(io.BytesIO(warp.png)).size == (8, 8)
    assert {info.name for info in client.list_models("classify")} == {"tiny_classify"}


def test_unknown_model_and_bad_bytes_raise_vision_error_with_code_and_message(client: VisionClient) -> None:
    with pytest.raises(VisionError) as unknown:
        client.classify(flat_image((1, 2, 3)), model="no_such_model")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert "no_such_model" in unknown.value.details
    with pytest.raises(VisionError) as garbage:
        client.detect(b"these bytes are not an image")
    assert garbage.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_expired_deadline_surfaces_as_deadline_exceeded(silent_address: str) -> None:
    with VisionClient(silent_address, timeout=30) as client, pytest.raises(VisionError) as expired:
        client.classify(flat_image((5, 5, 5)), timeout=0.2)  # the call's own deadline wins
    assert expired.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(expired.value).startswith("DEADLINE_EXCEEDED: ")


def test_wait_until_ready_on_a_dead_address_gives_up_with_deadline_exceeded(refusing_address: str) -> None:
    with VisionClient(refusing_address) as client, pytest.raises(VisionError) as waited:
        client.wait_until_ready(timeout=0.5)
    assert waited.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert refusing_address in str(waited.value)


def test_async_client_runs_concurrent_calls_and_matches_the_sync_client(
    tiny_server: ServerProcess, client: VisionClient
) -> None:
    images = [flat_image((i * 25, 100, 255 - i * 25)) for i in range(8)]

    async def run() -> list:
        async with AsyncVisionClient(tiny_server.target) as aclient:
            await aclient.wait_until_ready(timeout=10)
            return list(await asyncio.gather(*(aclient.classify(image, top_k=1) for image in images)))

    answers = asyncio.run(run())
    assert [answer.results[0] for answer in answers] == list(client.classify(images, top_k=1).results)


def test_async_deadline_and_bad_input_errors(silent_address: str) -> None:
    async def run() -> VisionError:
        async with AsyncVisionClient(silent_address, timeout=0.2) as aclient:
            with pytest.raises(InputError):
                await aclient.classify(np.zeros((4, 4, 3), np.float64))
            try:
                await aclient.caption(flat_image((1, 1, 1)))
            except VisionError as error:
                return error
            raise AssertionError("a call to a silent server returned")

    assert asyncio.run(run()).code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_can_connect_tells_a_server_from_nothing_listening(
    tiny_server: ServerProcess, refusing_address: str, silent_address: str
) -> None:
    answers = {}
    for target in (tiny_server.target, refusing_address, silent_address):
        with VisionClient(target) as sync_client:
            answers[target] = [sync_client.can_connect(timeout=0.5)]

    async def run() -> None:
        for target in answers:
            async with AsyncVisionClient(target) as aclient:
                answers[target].append(await aclient.can_connect(timeout=0.5))

    asyncio.run(run())
    assert answers[tiny_server.target] == [True, True]  # [sync, asyncio]
    assert answers[refusing_address] == answers[silent_address] == [False, False]
