"""Captioner family: vocabulary, encoder/decoder-step contracts, decoding, checkpoint loading."""

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import serving.tasks.caption
from contract import model_config
from contract.caption_decoding import caption_words
from contract.scenes import TEXTURES, make_scenes, stack_images
from export.bleu import corpus_bleu
from export.data.tensors import HELD_OUT_SEED_OFFSET, normalise
from export.families import captioner as captioner_family
from export.families import get_family
from export.families.base import OnnxRunner, WeightsError
from export.families.captioner import (
    BLEU_THRESHOLD,
    DECODER_SUFFIX,
    EVAL_SCENES,
    FULL,
    SMALL,
    SPECIAL_TOKENS,
    Captioner,
    Vocabulary,
    caption_max_length,
    caption_quality,
    caption_tensor,
    decoded_captions,
    held_out_quality,
    slot_positions,
    synthetic_vocabulary,
    tokenize,
    train_captioner,
)
from export.onnx import exported_runner, open_session, runner

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
    words = caption_words(vocabulary.tokens, ids, vocabulary.start_id)
    assert words == ["a", "blue", "circle", "on", "a", "plain", "background"]
    assert caption_words(vocabulary.tokens, vocabulary.encode("a purple circle"), 1) == ["a", "<unk>", "circle"]


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


def test_the_servers_greedy_decoding_over_the_exported_graphs_equals_pytorchs_greedy() -> None:
    torch.manual_seed(0)
    model = Captioner(TINY, synthetic_vocabulary()).eval()
    images = torch.randn(3, 3, 16, 16)
    greedy = model.greedy(images, max_length=caption_max_length())
    assert len(greedy) == 3 and all(model.vocabulary.end_id not in ids for ids in greedy)
    encoder, decoder = get_family("captioner").graphs(model, TINY, seed=0)
    tokens = model.vocabulary.tokens
    with exported_runner((encoder, decoder)) as run:
        served = decoded_captions(run, encoder.parameters, tokens, images.numpy(), beam_size=1)
        beam = decoded_captions(run, encoder.parameters, tokens, images.numpy(), beam_size=3)
    assert served == [caption_words(tokens, ids, model.vocabulary.start_id) for ids in greedy]
    assert len(beam) == 3 and all(len(words) <= caption_max_length() for words in beam)


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


def test_the_servers_decoding_over_the_two_written_graphs_captions_held_out_scenes(small_repository: Path) -> None:
    """What the server does, from the files alone: vocabulary, tokens and length from config.pbtxt."""
    folder = small_repository / "captioner_small"
    parameters = _parameters(folder)
    assert parameters["task"] == "caption" and parameters["decoder_model"] == "captioner_small_decoder"
    assert _parameters(small_repository / "captioner_small_decoder")["task"] == "caption_decoder"
    for name in ("captioner_small", "captioner_small_decoder"):
        onnx.checker.check_model(str(small_repository / name / "1" / "model.onnx"))
    tokens = (folder / parameters["vocabulary"]).read_text().splitlines()
    preprocessing = json.loads(parameters["preprocessing"])
    scenes = make_scenes(32, preprocessing["size"][0], seed=4242)
    images = normalise(stack_images(scenes), preprocessing["mean"], preprocessing["std"]).numpy()
    for beam_size in (1, 3):
        words = decoded_captions(_written_runner(small_repository), parameters, tokens, images, beam_size)
        assert corpus_bleu(words, [[scene.caption.split()] for scene in scenes]) >= 0.60


def _written_runner(repository: Path) -> OnnxRunner:
    """An OnnxRunner over the captioner's graphs as the export wrote them."""
    return runner(
        {
            suffix: open_session(repository / f"captioner_small{suffix}" / "1" / "model.onnx")
            for suffix in ("", DECODER_SUFFIX)
        }
    )


def _held_out(repository: Path, count: int) -> tuple[dict[str, str], list[str], list]:
    """The encoder's config.pbtxt parameters, its vocabulary file, and the report's first `count` held-out scenes."""
    folder = repository / "captioner_small"
    parameters = _parameters(folder)
    seed = json.loads((folder / "1" / "export_report.json").read_text())["seed"]
    size = json.loads(parameters["preprocessing"])["size"][0]
    vocabulary = (folder / parameters["vocabulary"]).read_text().splitlines()
    return parameters, vocabulary, make_scenes(EVAL_SCENES, size, seed + HELD_OUT_SEED_OFFSET)[:count]


def test_the_reported_caption_figures_are_the_servers_decoding_over_the_written_graphs(
    small_repository: Path,
) -> None:
    """One decoding: the export measures with the function the server runs, over the graphs it wrote."""
    assert captioner_family.beam_search is serving.tasks.caption.beam_search
    report = json.loads((small_repository / "captioner_small" / "1" / "export_report.json").read_text())["quality"]
    parameters, vocabulary, scenes = _held_out(small_repository, EVAL_SCENES)
    quality = held_out_quality(_written_runner(small_repository), parameters, vocabulary, scenes)
    assert (quality.metric, quality.value) == (report["metric"], report["value"])
    assert [(bar.metric, bar.value) for bar in quality.gates] == [(b["metric"], b["value"]) for b in report["gates"]]
    assert quality.details["bleu4_beam"] == report["details"]["bleu4_beam"]


def test_a_decoder_that_confuses_textures_fails_the_gate(small_repository: Path) -> None:
    """The written decoder with its texture words' log-probabilities rotated: BLEU-4 stays high, the gate holds."""
    parameters, vocabulary, scenes = _held_out(small_repository, 60)
    textures = [vocabulary.index(texture) for texture in TEXTURES]
    run = _written_runner(small_repository)

    def broken(suffix: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = run(suffix, inputs)
        if suffix == DECODER_SUFFIX:
            outputs["logprobs"][:, textures] = outputs["logprobs"][:, np.roll(textures, 1)]
        return outputs

    assert held_out_quality(run, parameters, vocabulary, scenes).passed
    quality = held_out_quality(broken, parameters, vocabulary, scenes)
    assert not quality.passed and "texture_accuracy" in " ".join(quality.misses())


def test_evaluate_measures_captions_of_the_servers_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's greedy and beam figures both come from contract's beam_search (a spy counts its beams)."""
    widths: list[int] = []

    async def spy(step, initial, settings):  # type: ignore[no-untyped-def]
        widths.append(settings.beam_size)
        return await serving.tasks.caption.beam_search(step, initial, settings)

    monkeypatch.setattr(captioner_family, "beam_search", spy)
    torch.manual_seed(0)
    quality = get_family("captioner").evaluate(Captioner(TINY, synthetic_vocabulary()).eval(), TINY, seed=0)
    assert widths == [1, captioner_family.BEAM_SIZE]
    assert quality is not None and quality.details["held_out_scenes"] == EVAL_SCENES
