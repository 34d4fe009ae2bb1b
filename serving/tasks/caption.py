"""Caption: images -> text, by greedy or beam-search decoding over two models.

Model contract (docs/MODEL_REPOSITORY.md): the encoder maps `images` FP32 [B, 3, H, W] to the
decoder's initial state `h`, `c` FP32 [B, S]; the decoder-step model maps `token` INT64 [B, 1],
`h`, `c` to `logprobs` FP32 [B, V], `h_out`, `c_out`.

The encoder runs once per request. The loop then sends one decoder step at a time through the
decoder model's own batcher: all rows of a request (its images x beams) go as one submission,
and the batcher merges the steps that concurrent requests queued meanwhile, so requests join and
leave the running batch between steps. Greedy decoding is beam search with one beam.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from contract.names import IMAGES, LOGPROBS, STATE_C, STATE_C_OUT, STATE_H, STATE_H_OUT, TOKEN
from serving.errors import InvalidArgument
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.classify import top_columns
from serving.tasks.common import TensorModel, prepare_images

#: Beam widths above this multiply decoder work for no measurable gain on these models.
MAX_BEAM_SIZE = 16


@dataclass(frozen=True)
class Caption:
    text: str
    log_probability: float  # sum of the token log-probabilities (end token included when reached)


@dataclass(frozen=True)
class DecoderState:
    """LSTM state, one row per running sequence: `h`, `c` float32 (rows, S)."""

    h: np.ndarray
    c: np.ndarray


@dataclass(frozen=True)
class StepOutput:
    logprobs: np.ndarray  # float32 (rows, V), log-probabilities of the next token
    state: DecoderState


#: One decoder step: tokens int64 (rows, 1) and the state of those rows -> next-token log-probs and state.
DecoderStep = Callable[[np.ndarray, DecoderState], Awaitable[StepOutput]]


@dataclass(frozen=True)
class TokenSequence:
    tokens: tuple[int, ...]  # without start and end tokens
    log_probability: float


@dataclass(frozen=True)
class SearchSettings:
    start_token: int
    end_token: int
    beam_size: int  # 1 = greedy
    max_length: int  # most words per sequence (start and end tokens not counted)


async def beam_search(step: DecoderStep, initial: DecoderState, settings: SearchSettings) -> list[TokenSequence]:
    """Decode one token sequence per row of `initial` (one row per image).

    Beam scores are sums of log-probabilities (no length normalisation). A finished beam keeps
    its score; an image stops decoding when all its beams finished or when its best finished
    beam already beats every unfinished one (scores only fall). Finished images leave the batch.
    After `max_length` words the end token is forced, so its log-probability counts too.
    """
    images, steps, end = initial.h.shape[0], settings.max_length + 1, settings.end_token
    # Per image and beam; beams start as 1 per image and widen to beam_size after the first step.
    scores = np.zeros((images, 1))
    history = np.full((images, 1, steps), end, dtype=np.int64)
    finished = np.zeros((images, 1), dtype=bool)
    tokens = np.full((images, 1), settings.start_token, dtype=np.int64)
    live = np.arange(images)  # images still decoding; `state` holds their rows, `beams` per image
    state = initial
    best = [TokenSequence(tokens=(), log_probability=0.0)] * images
    for position in range(steps):
        output = await step(tokens[live].reshape(-1, 1), state)
        beams, vocabulary = scores.shape[1], output.logprobs.shape[1]
        candidates = scores[live][:, :, None] + output.logprobs.reshape(len(live), beams, vocabulary)
        done = finished[live]
        candidates[done] = -np.inf  # a finished beam continues only as itself, with its score
        candidates[done, end] = scores[live][done]
        if position == steps - 1:
            forced = np.full_like(candidates, -np.inf)
            forced[:, :, end] = candidates[:, :, end]
            candidates = forced
        flat = candidates.reshape(len(live), beams * vocabulary)
        chosen = top_columns(flat, min(settings.beam_size, flat.shape[1]))
        parents, next_tokens = np.divmod(chosen, vocabulary)
        width = chosen.shape[1]
        if width != beams:  # widen the per-image arrays to the new beam count
            scores = np.zeros((images, width))
            history = np.pad(history, ((0, 0), (0, width - beams), (0, 0)), mode="edge")
            finished = np.zeros((images, width), dtype=bool)
            tokens = np.zeros((images, width), dtype=np.int64)
        slots = np.arange(len(live))[:, None]
        scores[live] = np.take_along_axis(flat, chosen, axis=1)
        history[live] = history[live[:, None], parents]
        history[live, :, position] = next_tokens
        finished[live] = done[slots, parents] | (next_tokens == end)
        tokens[live] = next_tokens
        rows = (slots * beams + parents).reshape(-1)
        state = DecoderState(h=output.state.h[rows], c=output.state.c[rows])
        stop = _images_done(scores[live], finished[live])
        for slot in np.flatnonzero(stop).tolist():
            best[live[slot]] = _best_sequence(scores[live[slot]], history[live[slot]], end)
        if stop.all():
            break
        keep_rows = np.repeat(~stop, width)
        live = live[~stop]
        state = DecoderState(h=state.h[keep_rows], c=state.c[keep_rows])
    return best


def _images_done(scores: np.ndarray, finished: np.ndarray) -> np.ndarray:
    """bool (images,): every beam finished, or the best finished beam beats every unfinished one."""
    best_finished = np.where(finished, scores, -np.inf).max(axis=1)
    best_running = np.where(finished, -np.inf, scores).max(axis=1)
    return finished.all(axis=1) | (best_finished >= best_running)


def _best_sequence(scores: np.ndarray, history: np.ndarray, end: int) -> TokenSequence:
    beam = int(np.argmax(scores))
    tokens = history[beam].tolist()
    length = tokens.index(end) if end in tokens else len(tokens)
    return TokenSequence(tokens=tuple(tokens[:length]), log_probability=float(scores[beam]))


def decoder_step(decoder: TensorModel, deadline: float | None) -> DecoderStep:
    """A DecoderStep that runs through `decoder`'s batcher (tensor names per the model contract)."""

    async def step(tokens: np.ndarray, state: DecoderState) -> StepOutput:
        outputs = await decoder.infer({TOKEN: tokens, STATE_H: state.h, STATE_C: state.c}, deadline)
        return StepOutput(
            logprobs=outputs[LOGPROBS], state=DecoderState(h=outputs[STATE_H_OUT], c=outputs[STATE_C_OUT])
        )

    return step


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
        initial = DecoderState(h=encoded[STATE_H], c=encoded[STATE_C])
        sequences = await beam_search(decoder_step(decoder, deadline), initial, settings)
        return [
            Caption(text=self.text(sequence.tokens), log_probability=sequence.log_probability)
            for sequence in sequences
        ]

    def text(self, tokens: Sequence[int]) -> str:
        """Words of `tokens` joined by spaces; the start token and ids outside the vocabulary are skipped."""
        words = self.vocabulary
        return " ".join(words[token] for token in tokens if 0 <= token < len(words) and token != self.start_token)
