"""Caption decoding: the one beam search, run by the server and by the export report's quality figure.

Model contract (docs/MODEL_REPOSITORY.md): the encoder maps `images` to the decoder's initial state
`h`, `c` FP32 [B, S]; the decoder-step model maps `token` INT64 [B, 1], `h`, `c` to `logprobs`
FP32 [B, V], `h_out`, `c_out`. How a step runs (the server's batcher, an ONNX Runtime session in the
export) is the caller's `TensorRunner`; greedy decoding is beam search with one beam.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.ranking import top_columns


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

#: Runs one model on named input arrays -> named output arrays.
TensorRunner = Callable[[Mapping[str, np.ndarray]], Awaitable[Mapping[str, np.ndarray]]]


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


def initial_state(encoded: Mapping[str, np.ndarray]) -> DecoderState:
    """The decoder's initial state from the encoder model's outputs."""
    return DecoderState(h=encoded["h"], c=encoded["c"])


def decoder_step(run: TensorRunner) -> DecoderStep:
    """A DecoderStep that runs the decoder-step model through `run` (tensor names per the model contract)."""

    async def step(tokens: np.ndarray, state: DecoderState) -> StepOutput:
        outputs = await run({"token": tokens, "h": state.h, "c": state.c})
        return StepOutput(
            logprobs=outputs["logprobs"], state=DecoderState(h=outputs["h_out"], c=outputs["c_out"])
        )

    return step


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


def caption_words(vocabulary: Sequence[str], tokens: Sequence[int], start_token: int) -> list[str]:
    """The words of `tokens`; the start token and ids outside the vocabulary are skipped."""
    return [vocabulary[token] for token in tokens if 0 <= token < len(vocabulary) and token != start_token]
