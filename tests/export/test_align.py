"""The align family's parts on their own: the sentence encoder ignores padding, the ranking loss is the
paper's hinge, the retrieval gate refuses a broken model, and the exported pair answers as PyTorch does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.alignment_scores import alignment_scores, recall_at
from contract.scenes import make_scenes
from export import onnx as onnx_export
from export.families.align import (
    POOL_SIZE,
    SMALL,
    Aligner,
    AlignFamily,
    ranking_loss,
    retrieval_pools,
    retrieval_quality,
    token_tensor,
)
from export.families.captioner import synthetic_vocabulary


def test_padding_changes_no_word_vector() -> None:
    torch.manual_seed(0)
    aligner = Aligner(SMALL, synthetic_vocabulary()).eval()
    caption = "a red star on a striped background"
    short = token_tensor(aligner.vocabulary, [caption], 7)
    long = token_tensor(aligner.vocabulary, [caption], SMALL.max_words)
    with torch.no_grad():
        words_short, words_long = aligner.sentence(short), aligner.sentence(long)
    torch.testing.assert_close(words_long[:, :7], words_short, atol=1e-6, rtol=0)
    assert words_long[:, 7:].abs().max() == 0
    assert words_short.abs().min(dim=2).values.max() > 0  # every real word has a vector


def test_ranking_loss_is_the_hinge_over_negatives_both_ways() -> None:
    scores = torch.tensor([[3.0, 2.5], [0.0, 1.0]])  # image 0 - sentence 1 within the margin of 3.0
    same = torch.zeros(2, 2, dtype=torch.bool).fill_diagonal_(True)
    # by sentence: image 0 vs sentence 1: relu(2.5 - 3 + 1) = 0.5; image 1 vs sentence 0: relu(0 - 1 + 1) = 0
    # by image: sentence 1 vs image 0: relu(2.5 - 1 + 1) = 2.5; sentence 0 vs image 1: relu(0 - 3 + 1) = 0
    assert ranking_loss(scores, same, 1.0).item() == pytest.approx((0.5 + 2.5) / 2)
    assert ranking_loss(scores, torch.ones(2, 2, dtype=torch.bool), 1.0).item() == 0  # equal captions: no negatives


def test_scores_sum_each_words_best_region() -> None:
    regions = np.array([[[1.0, 0.0], [0.0, 2.0]]])  # one image, two regions
    words = np.array([[[1.0, 1.0], [3.0, 0.0], [5.0, 5.0]]])  # one sentence; its third position is padding
    scored = alignment_scores(regions, words, np.array([[True, True, False]]))
    assert scored.scores.tolist() == [[2.0 + 3.0]]
    assert scored.best_region.tolist() == [[[1, 0, 0]]]
    assert recall_at(np.array([[1.0, 1.0], [0.0, 2.0]]), (1, 2)) == {1: 0.5, 2: 1.0}  # a tie counts against


def test_retrieval_gate_refuses_a_broken_model() -> None:
    """Random (untrained) weights miss both R@1 bars of 0.6; the bars name both directions."""
    torch.manual_seed(0)
    untrained = Aligner(SMALL, synthetic_vocabulary()).eval()
    pools = retrieval_pools(make_scenes(400, SMALL.image_size, 5, split="test"), 1, POOL_SIZE)
    assert len(pools) == 1 and len({scene.caption for scene in pools[0]}) == POOL_SIZE
    quality = retrieval_quality(untrained, pools)
    assert not quality.passed and len(quality.misses()) == 2, quality
    assert set(quality.details) >= {"image_to_sentence_r5", "sentence_to_image_r5", "chance_r1"}


def test_exported_pair_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    family = AlignFamily()
    aligner = Aligner(SMALL, synthetic_vocabulary()).eval()
    image, sentence = family.graphs(aligner, SMALL, seed=0)
    assert (image.task, sentence.task) == ("align", "align_sentence")
    assert len(json.loads(image.parameters["regions"])) == SMALL.regions
    for graph in (image, sentence):
        path = tmp_path / f"{graph.task}.onnx"
        onnx_export.export_graph(graph, path)
        checks = onnx_export.graph_parity(graph, onnx_export.open_session(path))
        assert all(check.passed for check in checks), checks
