"""Captioner family: vocabulary, encoder/decoder-step contracts, decoding, checkpoint loading."""

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from contract import model_config
from contract.scenes import TEXTURES, make_scenes, stack_images
from export.bleu import corpus_bleu
from export.data.tensors import normalise
from export.families import get_family
from export.families.base import WeightsError
from export.families.captioner import (
    BLEU_THRESHOLD,
    FULL,
    SMALL,
    SPECIAL_TOKENS,
    Captioner,
    Vocabulary,
    caption_max_length,
    caption_quality,
    caption_tensor,
    slot_positions,
    synthetic_vocabulary,
    tokenize,
    train_captioner,
)

TINY = replace(
    SMALL,
    image_size=16,
    widths=(4, 8),
    embed_dim=8,
    hidden_size=16,
    image_code=4,
    train_steps=2,
    batch_size=4,
    train_scenes=8,
)


def test_vocabulary_starts_with_the_special_tokens_and_round_trips() -> None:
    vocabulary = Vocabulary.build(["a red circle on a plain background", "A blue ring"])
    assert vocabulary.tokens[:4] == SPECIAL_TOKENS
    ids = vocabulary.encode("a blue circle on a plain background")
    assert vocabulary.decode(ids + [vocabulary.end_id, 5]) == ["a", "blue", "circle", "on", "a", "plain", "background"]
    assert vocabulary.decode(vocabulary.encode("a purple circle")) == ["a", "<unk>", "circle"]


def test_synthetic_vocabulary_covers_every_synthetic_word() -> None:
    vocabulary = synthetic_vocabulary()
    for word in ("red", "hexagon", "checkered", "background"):
        assert word in vocabulary.tokens
    assert caption_max_length() == len(["a", "red", "circle", "on", "a", "plain", "background"]) + 1


def test_caption_tensor_frames_words_with_start_end_and_padding() -> None:
    vocabulary = Vocabulary.build(["a b c"])
    rows = caption_tensor(vocabulary, ["a b c", "b"], max_length=4)
    start, end, pad = vocabulary.start_id, vocabulary.end_id, vocabulary.pad_id
    a, b, c = vocabulary.encode("a b c")
    assert rows.tolist() == [[start, a, b, c, end], [start, b, end, pad, pad]]


@pytest.mark.parametrize("config", [TINY, FULL], ids=["tiny", "full"])
def test_encoder_and_decoder_step_shapes(config) -> None:
    vocabulary = synthetic_vocabulary()
    model = Captioner(config, vocabulary).eval()
    with torch.no_grad():
        h, c = model.encoder(torch.randn(2, 3, config.image_size, config.image_size))
        logprobs, h_out, c_out = model.decoder(torch.tensor([[1], [5]]), h, c)
    assert h.shape == c.shape == h_out.shape == c_out.shape == (2, config.state_size)
    assert logprobs.shape == (2, len(vocabulary.tokens))
    assert torch.allclose(logprobs.exp().sum(dim=1), torch.ones(2), atol=1e-5)


def test_the_decoder_graph_takes_only_token_ids_of_its_vocabulary() -> None:
    vocabulary = synthetic_vocabulary()
    _, decoder = get_family("captioner").graphs(Captioner(TINY, vocabulary).eval(), TINY, seed=0)
    assert json.loads(decoder.parameters["input_ranges"]) == {"token": [0, len(vocabulary.tokens) - 1]}


def test_sequence_teacher_forcing_equals_stepping_one_token_at_a_time() -> None:
    torch.manual_seed(0)
    model = Captioner(TINY, synthetic_vocabulary()).eval()
    tokens = torch.randint(0, len(model.vocabulary.tokens), (2, 5))
    h, c = model.encoder(torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        whole = torch.log_softmax(model.decoder.sequence_logits(tokens, h, c), dim=-1)
        for step in range(5):
            logprobs, h, c = model.decoder(tokens[:, step : step + 1], h, c)
            assert torch.allclose(whole[:, step], logprobs, atol=1e-5)


def test_greedy_and_beam_decoding_return_word_ids_without_end() -> None:
    torch.manual_seed(0)
    model = Captioner(TINY, synthetic_vocabulary()).eval()
    images = torch.randn(3, 3, 16, 16)
    greedy = model.greedy(images, max_length=6)
    assert len(greedy) == 3 and all(len(ids) <= 6 for ids in greedy)
    beam = model.beam(images[0], max_length=6, beam_size=1)
    assert beam == greedy[0]  # a beam of one is greedy
    assert model.vocabulary.end_id not in model.beam(images[1], max_length=6, beam_size=3)


def _references() -> list[list[str]]:
    return [tokenize(scene.caption) for scene in make_scenes(300, 16, seed=11)]


def _with_texture(references: list[list[str]], texture: Callable[[int, str], str]) -> list[list[str]]:
    """The references with the texture word of caption i replaced by texture(i, right word)."""
    at = slot_positions()["texture"]
    return [words[:at] + [texture(i, words[at])] + words[at + 1 :] for i, words in enumerate(references)]


def test_slots_are_the_colour_shape_and_texture_words() -> None:
    words = ["a", "red", "star", "on", "a", "striped", "background"]
    assert {slot: words[i] for slot, i in slot_positions().items()} == {
        "colour": "red",
        "shape": "star",
        "texture": "striped",
    }


def test_right_captions_clear_every_bar() -> None:
    references = _references()
    quality = caption_quality(references, references)
    assert quality.passed and quality.value == pytest.approx(1.0)
    assert [(bar.metric, bar.value) for bar in quality.gates] == [
        ("colour_accuracy", 1.0),
        ("shape_accuracy", 1.0),
        ("texture_accuracy", 1.0),
        ("exact_caption_fraction", 1.0),
    ]


@pytest.mark.parametrize("broken", ["always_wrong", "at_chance"])
def test_a_captioner_blind_to_texture_clears_bleu_but_fails(broken: str) -> None:
    references = _references()
    rng = np.random.default_rng(0)
    if broken == "always_wrong":
        candidates = _with_texture(references, lambda _, right: TEXTURES[(TEXTURES.index(right) + 1) % len(TEXTURES)])
    else:
        candidates = _with_texture(references, lambda _, __: TEXTURES[rng.integers(len(TEXTURES))])
    quality = caption_quality(candidates, references)
    assert quality.value >= BLEU_THRESHOLD  # BLEU-4 alone would let it through ...
    assert not quality.passed  # ... the slot and exact-caption bars do not
    assert [bar.metric for bar in quality.bars if not bar.passed] == ["texture_accuracy", "exact_caption_fraction"]
    assert next(bar.value for bar in quality.bars if bar.metric == "texture_accuracy") < 0.35


def test_a_caption_cut_short_misses_its_slots() -> None:
    references = _references()
    quality = caption_quality([words[:2] for words in references], references)
    values = {bar.metric: bar.value for bar in quality.bars}
    assert values["colour_accuracy"] == 1.0 and values["shape_accuracy"] == values["texture_accuracy"] == 0.0


def test_smoke_training_returns_eval_mode_and_changes_weights() -> None:
    torch.manual_seed(0)
    model = Captioner(TINY, synthetic_vocabulary())
    before = model.decoder.classifier.weight.clone()
    trained = train_captioner(model, TINY, seed=0)
    assert not trained.training
    assert not torch.equal(before, trained.decoder.classifier.weight)


def test_full_checkpoint_round_trips_and_mismatch_is_refused(tmp_path: Path) -> None:
    family = get_family("captioner")
    source = family.build(FULL)
    path = tmp_path / "captioner.pth"
    torch.save(source.state_dict(), path)
    loaded = family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.encoder(images)[0], source.eval().encoder(images)[0])
    torch.save(family.build(SMALL).state_dict(), path)
    with pytest.raises(WeightsError, match="weights do not fit captioner_full: .*shape mismatches"):
        family.load(family.build(FULL), FULL, torch.load(path, weights_only=True))


def _parameters(folder: Path) -> dict[str, str]:
    return model_config.parameters(model_config.read(folder))


def _session(folder: Path) -> onnxruntime.InferenceSession:
    path = str(folder / "1" / "model.onnx")
    onnx.checker.check_model(path)
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_exported_pair_reports_quality_and_identical_greedy_captions(small_repository: Path) -> None:
    encoder_report = json.loads((small_repository / "captioner_small" / "1" / "export_report.json").read_text())
    decoder_report = json.loads((small_repository / "captioner_small_decoder" / "1" / "export_report.json").read_text())
    assert (encoder_report["task"], decoder_report["task"]) == ("caption", "caption_decoder")
    assert encoder_report["parity"]["passed"] and decoder_report["parity"]["passed"]
    checks = {check["name"]: check for check in encoder_report["parity"]["checks"]}
    greedy = checks["greedy_captions_onnx_vs_torch"]
    assert greedy["passed"] and greedy["detail"].startswith("16/16 greedy captions identical")
    assert all(c["max_abs_diff"] <= 1e-4 for r in (encoder_report, decoder_report) for c in r["parity"]["checks"])
    quality = encoder_report["quality"]
    assert quality["metric"] == "bleu4_greedy" and quality["passed"] and quality["value"] >= BLEU_THRESHOLD
    bars = {bar["metric"]: bar for bar in quality["gates"]}
    assert set(bars) == {"colour_accuracy", "shape_accuracy", "texture_accuracy", "exact_caption_fraction"}
    assert all(bar["value"] >= bar["threshold"] for bar in bars.values())


def test_a_numpy_loop_over_the_two_graphs_captions_held_out_scenes(small_repository: Path) -> None:
    """What the server does, from the files alone: vocabulary, tokens and length from config.pbtxt."""
    folder = small_repository / "captioner_small"
    parameters = _parameters(folder)
    assert parameters["task"] == "caption" and parameters["decoder_model"] == "captioner_small_decoder"
    assert _parameters(small_repository / "captioner_small_decoder")["task"] == "caption_decoder"
    tokens = (folder / parameters["vocabulary"]).read_text().splitlines()
    preprocessing = json.loads(parameters["preprocessing"])
    start, end, max_length = (int(parameters[key]) for key in ("start_token", "end_token", "max_length"))
    scenes = make_scenes(32, preprocessing["size"][0], seed=4242)
    images = normalise(stack_images(scenes), preprocessing["mean"], preprocessing["std"]).numpy()
    encoder, decoder = _session(folder), _session(small_repository / "captioner_small_decoder")
    h, c = encoder.run(["h", "c"], {"images": images})
    token = np.full((len(scenes), 1), start, dtype=np.int64)
    words: list[list[str]] = [[] for _ in scenes]
    done = np.zeros(len(scenes), dtype=bool)
    for _ in range(max_length):
        logprobs, h, c = decoder.run(["logprobs", "h_out", "c_out"], {"token": token, "h": h, "c": c})
        token = logprobs.argmax(axis=1)[:, None].astype(np.int64)
        for row, token_id in enumerate(token[:, 0]):
            done[row] |= token_id == end
            if not done[row]:
                words[row].append(tokens[token_id])
    assert corpus_bleu(words, [[scene.caption.split()] for scene in scenes]) >= 0.60
