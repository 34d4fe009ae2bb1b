"""The image-sentence score of Karpathy & Fei-Fei 2015 (eq. 8), in numpy: one definition for the server's
Align task and the export's retrieval gate, so that the gate measures what is served.

S(image, sentence) = sum over the sentence's words t of max over the image's regions i of v_i . s_t
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AlignmentScores:
    """scores float (I, S): image i against sentence s. best_region int (I, S, T): for each word t of
    sentence s, the region of image i its dot product is largest with; word_scores float (I, S, T): that
    dot product (padding positions: region 0, score 0)."""

    scores: np.ndarray
    best_region: np.ndarray
    word_scores: np.ndarray


def alignment_scores(regions: np.ndarray, words: np.ndarray, mask: np.ndarray) -> AlignmentScores:
    """regions float (I, R, D), words float (S, T, D), mask bool (S, T) (True = a word, False = padding)."""
    dots = np.einsum("ird,std->isrt", regions, words, optimize=True)  # (I, S, R, T)
    best = np.where(mask[None], dots.max(axis=2), 0.0)
    return AlignmentScores(
        scores=best.sum(axis=2, dtype=np.float32), best_region=dots.argmax(axis=2) * mask[None], word_scores=best
    )


def recall_at(scores: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """scores (Q, C) with the right candidate of query q at column q: the fraction of queries whose right
    candidate ranks within the top k, for each k. Ties count against the query (a constant scorer gets 0)."""
    right = np.diagonal(scores)[:, None]
    rank = (scores >= right).sum(axis=1)  # 1 = ranked strictly first
    return {k: float((rank <= k).mean()) for k in ks}
