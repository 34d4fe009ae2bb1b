"""Captioner family: vocabulary, encoder/decoder-step contracts, decoding, checkpoint loading."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from export.families import get_family
from export.families.base import WeightsError
from export.families.captioner import (
    FULL,
    SMALL,
    SPECIAL_TOKENS,
    Captioner,
    Vocabulary,
    caption_max_length,
    caption_tensor,
    synthetic_vocabulary,
    train_captioner,
)

TINY = replace(
    SMALL, image_size=16, widths=(4, 8), embed_dim=8, hidden_size=16, train_steps=2, batch_size=4, train_scenes=8
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
    assert h.shape == c.shape == h_out.shape == c_out.shape == (2, config.hidden_size)
    assert logprobs.shape == (2, len(vocabulary.tokens))
    assert torch.allclose(logprobs.exp().sum(dim=1), torch.ones(2), atol=1e-5)


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
