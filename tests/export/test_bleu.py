"""Corpus BLEU-4 against hand-computed values (Papineni et al. 2002)."""

import math

import pytest

from export.bleu import corpus_bleu


def words(text: str) -> list[str]:
    return text.split()


def test_identical_corpus_scores_one() -> None:
    caption = words("a red circle on a striped background")
    assert corpus_bleu([caption], [[caption]]) == pytest.approx(1.0)


def test_one_wrong_word_matches_hand_computation() -> None:
    # Matches per n: 6/7 unigrams, 4/6 bigrams, 2/5 trigrams, 1/4 four-grams; equal lengths, no penalty.
    score = corpus_bleu(
        [words("a red circle on a striped background")], [[words("a red square on a striped background")]]
    )
    assert score == pytest.approx((6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_counts_are_clipped_by_the_reference() -> None:
    assert corpus_bleu([words("the the the the")], [[words("the cat")]], max_n=1) == pytest.approx(0.25)


def test_short_candidates_pay_the_brevity_penalty() -> None:
    score = corpus_bleu([words("a red circle on a")], [[words("a red circle on a striped background")]])
    assert score == pytest.approx(math.exp(1 - 7 / 5))


def test_counts_are_pooled_over_the_corpus_not_averaged_per_sentence() -> None:
    candidates = [words("a b c d"), words("a b c e f g h i")]
    references = [[words("a b c d")], [words("a b c x f g h i")]]
    # unigrams 11/12, bigrams 8/10, trigrams 5/8, four-grams 2/6 over both sentences.
    expected = (11 / 12 * 8 / 10 * 5 / 8 * 2 / 6) ** 0.25
    assert corpus_bleu(candidates, references) == pytest.approx(expected)


def test_best_of_several_references_counts() -> None:
    candidate = words("a blue star on a plain background")
    references = [words("a red star on a plain background"), words("a blue star on a plain background")]
    assert corpus_bleu([candidate], [references]) == pytest.approx(1.0)


def test_no_matching_four_gram_scores_zero() -> None:
    assert corpus_bleu([words("one two three four")], [[words("four three two one")]]) == 0.0


def test_mismatched_corpus_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 candidates but 1 reference sets"):
        corpus_bleu([["a"], ["b"]], [[["a"]]])
