"""Corpus BLEU-4 (Papineni et al. 2002), the captioner's quality metric.

Pure Python so the figure means the same everywhere: modified n-gram precisions for n = 1..4 summed
over the whole corpus (not averaged per sentence), geometric mean with uniform weights, times the
brevity penalty exp(1 - r / c) when the candidate corpus is shorter than the closest-length
references. No smoothing: a corpus without a single matching 4-gram scores 0.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    candidates: Sequence[Sequence[str]],
    references: Sequence[Sequence[Sequence[str]]],
    max_n: int = 4,
) -> float:
    """BLEU-`max_n` of tokenised `candidates` against one or more tokenised references each.

    `references[i]` is the list of reference token lists for `candidates[i]`. Returns a value in
    [0, 1].
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every candidate needs at least one reference")
    matches = [0] * max_n
    totals = [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        candidate_length += len(candidate)
        # Closest reference length, the shorter one on ties (as the reference implementation).
        reference_length += min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(candidate, n)
            max_ref_counts: Counter[tuple[str, ...]] = Counter()
            for ref in refs:
                max_ref_counts |= _ngrams(ref, n)
            matches[n - 1] += sum(min(count, max_ref_counts[gram]) for gram, count in counts.items())
            totals[n - 1] += max(len(candidate) - n + 1, 0)
    if candidate_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if candidate_length > reference_length else math.exp(1 - reference_length / candidate_length)
    return brevity * math.exp(log_precision)
