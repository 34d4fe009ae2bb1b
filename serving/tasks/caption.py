"""Caption: images -> text, by greedy or beam-search decoding over two models.

Model contract (docs/MODEL_REPOSITORY.md): the encoder maps `images` FP32 [B, 3, H, W] to the
decoder's initial state `h`, `c` FP32 [B, S]; the decoder-step model maps `token` INT64 [B, 1],
`h`, `c` to `logprobs` FP32 [B, V], `h_out`, `c_out`.

The encoder runs once per request. The beam search (contract.caption_decoding, the same one the
export report's caption quality is measured with) then sends one decoder step at a time through the
decoder model's own batcher: all rows of a request (its images x beams) go as one submission,
and the batcher merges the steps that concurrent requests queued meanwhile, so requests join and
leave the running batch between steps. Greedy decoding is beam search with one beam.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contract.caption_decoding import (
    DecoderStep,
    SearchSettings,
    beam_search,
    caption_words,
    decoder_step,
    initial_state,
)
from contract.names import IMAGES
from serving.errors import InvalidArgument
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.common import TensorModel, prepare_images

#: Beam widths above this multiply decoder work for no measurable gain on these models.
MAX_BEAM_SIZE = 16


@dataclass(frozen=True)
class Caption:
    text: str
    log_probability: float  # sum of the token log-probabilities (end token included when reached)


@dataclass(frozen=True)
class CaptionOptions:
    """`beam_size` 0 or 1 = greedy; `max_length` 0 = the model's trained maximum (tokens)."""

    beam_size: int = 1
    max_length: int = 0


@dataclass(frozen=True)
class Captioner:
    """An encoder model, its decoder-step model, and the caption vocabulary.

    `decoder` looks the decoder model up; a request calls it once, when it starts, and runs every
    step through what it got (serving.tasks.factory.StartedModel: a draining server refuses new
    lookups, and a request it admitted must still finish).
    """

    model: TensorModel  # the encoder: images -> initial decoder state
    decoder: Callable[[], TensorModel]
    preprocessing: Preprocessing
    vocabulary: tuple[str, ...]
    start_token: int
    end_token: int
    max_length: int
    limits: ImageLimits

    def settings(self, options: CaptionOptions) -> SearchSettings:
        """Validate `options` against the model; InvalidArgument says what is allowed."""
        if options.beam_size > MAX_BEAM_SIZE:
            raise InvalidArgument(f"beam_size {options.beam_size} is over the limit of {MAX_BEAM_SIZE}")
        if options.max_length > self.max_length:
            raise InvalidArgument(
                f"max_length {options.max_length} is over this model's trained maximum of {self.max_length}"
            )
        return SearchSettings(
            start_token=self.start_token,
            end_token=self.end_token,
            beam_size=max(1, options.beam_size),
            max_length=options.max_length or self.max_length,
        )

    async def caption(
        self, images: Sequence[ImageInput], options: CaptionOptions, deadline: float | None
    ) -> list[Caption]:
        settings = self.settings(options)
        decoder = self.decoder()
        batch = await prepare_images(images, self.preprocessing, self.limits)
        encoded = await self.model.infer({IMAGES: batch.tensor}, deadline)
        sequences = await beam_search(_through_batcher(decoder, deadline), initial_state(encoded), settings)
        return [
            Caption(text=self.text(sequence.tokens), log_probability=sequence.log_probability)
            for sequence in sequences
        ]

    def text(self, tokens: Sequence[int]) -> str:
        """Words of `tokens` joined by spaces; the start token and ids outside the vocabulary are skipped."""
        return " ".join(caption_words(self.vocabulary, tokens, self.start_token))


def _through_batcher(decoder: TensorModel, deadline: float | None) -> DecoderStep:
    """Decoder steps through `decoder`'s batcher, so that concurrent requests share its batches."""
    return decoder_step(lambda inputs: decoder.infer(inputs, deadline))
