"""Align: images x sentences -> scores, both rankings, and each word's region (Karpathy & Fei-Fei 2015).

Model contract (docs/MODEL_REPOSITORY.md): the image model maps `images` FP32 [B, 3, H, W] to
`regions` FP32 [B, R, D]; the sentence model maps `tokens` INT64 [B, T] (word ids, then the pad id)
to `words` FP32 [B, T, D]. The two run through their own batchers at once (images batch with other
requests' images, sentences with other requests' sentences); the scores are computed here, with the
function the export's retrieval gate uses (contract.alignment_scores).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from contract.alignment_scores import alignment_scores
from contract.names import IMAGES, REGIONS, TOKENS, WORDS
from contract.preprocessing import Placement
from serving.errors import InvalidArgument, ResourceExhausted
from serving.images import ImageInput, ImageLimits, Preprocessing
from serving.tasks.common import TensorModel, prepare_images
from serving.tasks.detect import Box, to_original_pixels

#: Sentences one request may hold: a 100-candidate retrieval pool (the export's gate) fits in one request.
MAX_SENTENCES = 100


@dataclass(frozen=True)
class EncodedSentences:
    """tokens int64 (S, T); per sentence its known words (in order) and the words the model does not know."""

    tokens: np.ndarray
    words: tuple[tuple[str, ...], ...]
    ignored: tuple[tuple[str, ...], ...]


def encode_sentences(sentences: Sequence[str], vocabulary: Sequence[str], pad: int, max_words: int) -> EncodedSentences:
    """Word ids of each sentence (lower-cased, whitespace-split); unknown words are dropped.

    InvalidArgument naming the sentence for: none at all, too many, an empty one, one without a word the
    model knows, one with more known words than the model's `max_words`.
    """
    if not sentences:
        raise InvalidArgument("the request has no sentences; send at least one")
    if len(sentences) > MAX_SENTENCES:
        raise ResourceExhausted(f"{len(sentences)} sentences in one request; the limit is {MAX_SENTENCES}")
    index = {word: i for i, word in enumerate(vocabulary) if i != pad and not word.startswith("<")}
    tokens = np.full((len(sentences), max_words), pad, dtype=np.int64)
    known_words, ignored_words = [], []
    for number, sentence in enumerate(sentences):
        words = sentence.lower().split()
        if not words:
            raise InvalidArgument(f"sentence {number} is empty; send words")
        known = tuple(word for word in words if word in index)
        if not known:
            raise InvalidArgument(
                f"sentence {number} ({sentence[:80]!r}) has no word this model knows; "
                f"it knows: {', '.join(sorted(index))}"
            )
        if len(known) > max_words:
            raise InvalidArgument(
                f"sentence {number} has {len(known)} known words; this model takes at most {max_words}"
            )
        tokens[number, : len(known)] = [index[word] for word in known]
        known_words.append(known)
        ignored_words.append(tuple(word for word in words if word not in index))
    return EncodedSentences(tokens=tokens, words=tuple(known_words), ignored=tuple(ignored_words))


@dataclass(frozen=True)
class AlignedWord:
    word: str
    region: int  # index into the image's regions
    score: float  # the word's dot product with that region


@dataclass(frozen=True)
class SentenceMatch:
    sentence: int
    score: float
    words: tuple[AlignedWord, ...]


@dataclass(frozen=True)
class ImageMatch:
    image: int
    score: float


@dataclass(frozen=True)
class ImageAlignment:
    sentences: tuple[SentenceMatch, ...]  # best first
    regions: tuple[Box, ...]  # the model's regions in this image's pixels


@dataclass(frozen=True)
class SentenceRanking:
    images: tuple[ImageMatch, ...]  # best first
    ignored_words: tuple[str, ...]


@dataclass(frozen=True)
class Alignment:
    images: tuple[ImageAlignment, ...]  # request order
    sentences: tuple[SentenceRanking, ...]  # request order


def _best_first(scores: np.ndarray) -> list[int]:
    return np.argsort(-scores, kind="stable").tolist()


def alignment_results(
    regions: np.ndarray,
    words: np.ndarray,
    sentences: EncodedSentences,
    pad: int,
    boxes: Sequence[Sequence[Box]],
) -> Alignment:
    """The answer from the two models' outputs; `boxes` per image and region (original pixels)."""
    scored = alignment_scores(regions, words, sentences.tokens != pad)
    images = []
    for image, row in enumerate(scored.scores):
        matches = tuple(
            SentenceMatch(
                sentence=sentence,
                score=float(row[sentence]),
                words=tuple(
                    AlignedWord(
                        word=word,
                        region=int(scored.best_region[image, sentence, t]),
                        score=float(scored.word_scores[image, sentence, t]),
                    )
                    for t, word in enumerate(sentences.words[sentence])
                ),
            )
            for sentence in _best_first(row)
        )
        images.append(ImageAlignment(sentences=matches, regions=tuple(boxes[image])))
    rankings = tuple(
        SentenceRanking(
            images=tuple(ImageMatch(image=image, score=float(column[image])) for image in _best_first(column)),
            ignored_words=ignored,
        )
        for column, ignored in zip(scored.scores.T, sentences.ignored, strict=True)
    )
    return Alignment(images=tuple(images), sentences=rankings)


def region_boxes(fractions: np.ndarray, input_size: tuple[int, int], where: Sequence[Placement]) -> list[list[Box]]:
    """Each image's regions in its own pixels (mapped back through its placement, as a detector's boxes);
    `fractions` float (R, 4) of the model's input."""
    height, width = input_size
    on_input = fractions * np.array([width, height, width, height], dtype=np.float32)
    pixels = to_original_pixels(np.broadcast_to(on_input, (len(where), *on_input.shape)), where)
    return [[Box(*box) for box in image.tolist()] for image in pixels]


@dataclass(frozen=True)
class Aligner:
    """The image model, its sentence model, the vocabulary and the regions' layout.

    `sentence_model` looks the sentence model up once per request (as the captioner's decoder).
    """

    model: TensorModel  # the image side: images -> regions
    sentence_model: Callable[[], TensorModel]
    preprocessing: Preprocessing
    vocabulary: tuple[str, ...]
    pad_token: int
    max_words: int
    regions: np.ndarray  # float (R, 4): x1, y1, x2, y2 as fractions of the model's input
    limits: ImageLimits

    async def align(self, images: Sequence[ImageInput], sentences: Sequence[str], deadline: float | None) -> Alignment:
        encoded = encode_sentences(sentences, self.vocabulary, self.pad_token, self.max_words)
        sentence_model = self.sentence_model()
        batch = await prepare_images(images, self.preprocessing, self.limits)
        image_side, sentence_side = await asyncio.gather(
            self.model.infer({IMAGES: batch.tensor}, deadline),
            sentence_model.infer({TOKENS: encoded.tokens}, deadline),
        )
        boxes = region_boxes(self.regions, self.preprocessing.size, batch.placements)
        return alignment_results(image_side[REGIONS], sentence_side[WORDS], encoded, self.pad_token, boxes)
