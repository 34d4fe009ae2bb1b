"""Image-sentence alignment (Karpathy & Fei-Fei 2015, "Deep Visual-Semantic Alignments"): task `align`.

Two encoders map into one D-dimensional space: a CNN gives the image's regions (the whole image, then
a fixed grid of cells of its last feature map, standing in for the paper's R-CNN detections), a
bidirectional RNN gives each word of a sentence a vector in the context of the whole sentence. The
score of an image and a sentence is the paper's eq. 8: the sum over words of the word's best dot product
with any region; training is its structured max-margin objective (a ranking hinge in both directions
over the other images and sentences of a batch). The word's best region is the alignment the paper draws.

Served as two graphs so the server batches each side on its own: the image side (`images` ->
`regions`) and the sentence side (`tokens` -> `words`); the server computes the scores (numpy,
contract.alignment_scores, the same function the export's retrieval gate uses).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract.alignment_scores import alignment_scores, recall_at
from contract.names import (
    ALIGN,
    ALIGN_SENTENCE,
    IMAGES,
    INPUT_RANGES_PARAMETER,
    MAX_WORDS_PARAMETER,
    PAD_TOKEN_PARAMETER,
    PREPROCESSING_PARAMETER,
    REGIONS,
    REGIONS_PARAMETER,
    SENTENCE_MODEL_PARAMETER,
    TOKENS,
    VOCABULARY_PARAMETER,
    WORDS,
)
from contract.scenes import Scene, make_scenes, stack_images
from contract.tensors import TensorSpec
from export.data.tensors import DEFAULT_MEAN, DEFAULT_STD, evaluation_split, normalise
from export.families import register_family
from export.families.base import (
    Bar,
    FamilyConfig,
    GraphSpec,
    OnnxRunner,
    ParityCase,
    ParityCheck,
    Quality,
    input_ranges_parameter,
    load_state_dict_strict,
    preprocessing_parameter,
)
from export.families.captioner import Vocabulary, synthetic_vocabulary
from export.families.layers import conv_stages
from export.families.narrow import narrow
from export.repository import model_name
from export.train import fit_adam_one_cycle, set_threads
from protos.inference import model_config_pb2 as mc


@dataclass(frozen=True)
class AlignConfig(FamilyConfig):
    """Shape and training budget of the two encoders.

    image_size: square input side; each encoder stage (3x3 conv, BN, ReLU, 2x2 max-pool) halves it, and a
        last 3x3 conv without pooling widens what each cell of the final map sees.
    grid: the regions are the whole image then grid x grid cells of the final map (row-major).
    embed_dim: D, the shared space. word_dim: word embedding size. hidden_size: each RNN direction's state.
    max_words: T, the sentence graph's fixed length (padded with `<pad>`; longer sentences are refused).
    margin: the ranking hinge's margin (the paper's 1 on its unnormalised scores).
    """

    image_size: int = 224
    widths: tuple[int, ...] = (64, 128, 256, 512)
    grid: int = 4
    embed_dim: int = 1024
    word_dim: int = 300
    hidden_size: int = 512
    max_words: int = 32
    margin: float = 1.0
    train_steps: int = 0
    batch_size: int = 64
    train_scenes: int = 3000
    lr: float = 2e-3

    @property
    def regions(self) -> int:
        return 1 + self.grid * self.grid


FULL = AlignConfig(name="full", trainable=False, max_batch_size=32)
SMALL = AlignConfig(
    name="small",
    trainable=True,
    max_batch_size=64,
    image_size=64,
    widths=(16, 32, 64),
    grid=4,
    embed_dim=64,
    word_dim=32,
    hidden_size=64,
    max_words=16,
    train_steps=400,
    batch_size=64,
    train_scenes=3000,
    lr=3e-3,
)


class ImageEncoder(nn.Module):
    """images FP32 [B, 3, H, W] (preprocessed) -> regions FP32 [B, R, D]: the whole image, then the grid."""

    def __init__(self, config: AlignConfig) -> None:
        super().__init__()
        layers = conv_stages(config.widths)
        channels = config.widths[-1]
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.cells = nn.AdaptiveAvgPool2d(config.grid)
        self.project = nn.Linear(channels, config.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        whole = features.mean(dim=(2, 3))[:, None]  # (B, 1, C)
        cells = self.cells(features).flatten(2).transpose(1, 2)  # (B, g*g, C)
        return self.project(torch.cat([whole, cells], dim=1))


class SentenceEncoder(nn.Module):
    """tokens INT64 [B, T] (`<pad>` after the words) -> words FP32 [B, T, D] (padding rows: zeros).

    The paper's bidirectional RNN with GRU cells: a forward and a backward pass over the word embeddings,
    each position's two states mapped into the shared space. The backward pass starts at each sentence's
    last word: its state stays zero over the padding (masked updates), so padding changes nothing.
    """

    def __init__(self, config: AlignConfig, vocabulary_size: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocabulary_size, config.word_dim)
        self.forward_cell = nn.GRUCell(config.word_dim, config.hidden_size)
        self.backward_cell = nn.GRUCell(config.word_dim, config.hidden_size)
        self.project = nn.Linear(2 * config.hidden_size, config.embed_dim)
        self.hidden_size = config.hidden_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).to(torch.float32)[:, :, None]  # (B, T, 1)
        embedded = self.embed(tokens)
        steps = tokens.shape[1]
        h = embedded.new_zeros(tokens.shape[0], self.hidden_size)
        forwards = []
        for t in range(steps):
            h = mask[:, t] * self.forward_cell(embedded[:, t], h) + (1 - mask[:, t]) * h
            forwards.append(h)
        h = embedded.new_zeros(tokens.shape[0], self.hidden_size)
        backwards: list[torch.Tensor] = []
        for t in reversed(range(steps)):
            h = mask[:, t] * self.backward_cell(embedded[:, t], h) + (1 - mask[:, t]) * h
            backwards.insert(0, h)
        states = torch.cat([torch.stack(forwards, dim=1), torch.stack(backwards, dim=1)], dim=2)
        return self.project(states) * mask


class Aligner(nn.Module):
    """The two encoders; the export splits them into two graphs."""

    def __init__(self, config: AlignConfig, vocabulary: Vocabulary) -> None:
        super().__init__()
        self.config = config
        self.vocabulary = vocabulary
        self.image = ImageEncoder(config)
        self.sentence = SentenceEncoder(config, len(vocabulary.tokens), vocabulary.pad_id)

    def scores(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """FP32 [I, S]: eq. 8 for every image against every sentence (padding words add zero)."""
        regions, words = self.image(images), self.sentence(tokens)
        return torch.einsum("ird,std->isrt", regions, words).max(dim=2).values.sum(dim=2)


def token_tensor(vocabulary: Vocabulary, captions: Sequence[str], max_words: int) -> torch.Tensor:
    """INT64 [N, max_words]: each caption's word ids, then `<pad>`."""
    rows = torch.full((len(captions), max_words), vocabulary.pad_id, dtype=torch.int64)
    for row, caption in enumerate(captions):
        ids = vocabulary.encode(caption)[:max_words]
        rows[row, : len(ids)] = torch.tensor(ids)
    return rows


def ranking_loss(scores: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """The paper's structured max-margin objective over a batch, per image-sentence pair.

    scores [B, B] (image i, sentence j; the pairs on the diagonal), same [B, B] bool: pairs whose captions
    are equal, which are no negatives (synthetic scenes repeat captions).
    """
    right = scores.diagonal()
    by_sentence = F.relu(scores - right[:, None] + margin)  # image i ranks its sentence above sentence j
    by_image = F.relu(scores - right[None, :] + margin)  # sentence j ranks its image above image i
    negatives = (~same).to(scores.dtype)
    return ((by_sentence + by_image) * negatives).sum() / scores.shape[0]


def _images(scenes: Sequence[Scene]) -> torch.Tensor:
    return normalise(stack_images(list(scenes)), DEFAULT_MEAN, DEFAULT_STD)


def train_aligner(model: Aligner, config: AlignConfig, seed: int) -> Aligner:
    """Adam on batches of training scenes and their captions, the ranking loss; returns the eval-mode model."""
    set_threads()
    torch.manual_seed(seed)
    scenes = make_scenes(config.train_scenes, config.image_size, seed, split="train")
    images = _images(scenes)
    captions = [scene.caption for scene in scenes]
    # Cut to the longest caption: padding changes no word's vector, and the RNN runs fewer steps.
    tokens = token_tensor(model.vocabulary, captions, config.max_words)
    tokens = tokens[:, : int((tokens != model.vocabulary.pad_id).sum(dim=1).max())]
    caption_ids = torch.tensor([sorted(set(captions)).index(c) for c in captions])
    rng = torch.Generator().manual_seed(seed)

    def step_loss() -> torch.Tensor:
        index = torch.randint(0, len(scenes), (config.batch_size,), generator=rng)
        same = caption_ids[index][:, None] == caption_ids[index][None, :]
        return ranking_loss(model.scores(images[index], tokens[index]), same, config.margin)

    fit_adam_one_cycle(model, step_loss, config.train_steps, config.lr, f"align_{config.name} train")
    return model.eval()


POOL_SIZE = 100
POOLS = 5
EVAL_DRAW = 1500  # held-out scenes drawn to fill POOLS pools of POOL_SIZE distinct captions
RECALL_THRESHOLD = 0.6
RECALL_KS = (1, 5, 10)


def retrieval_pools(scenes: Sequence[Scene], pools: int, size: int) -> list[list[Scene]]:
    """Full pools of `size` scenes with pairwise different captions (chance R@1 = 1 / size), in draw order."""
    filled: list[list[Scene]] = [[] for _ in range(pools)]
    for scene in scenes:
        pool = next((p for p in filled if len(p) < size and all(s.caption != scene.caption for s in p)), None)
        if pool is not None:
            pool.append(scene)
    return [pool for pool in filled if len(pool) == size]


@torch.no_grad()
def retrieval_quality(model: Aligner, pools: Sequence[Sequence[Scene]]) -> Quality:
    """Image->sentence and sentence->image R@K averaged over the pools; R@1 of each direction gated."""
    config = model.config
    recalls: dict[str, list[float]] = {}
    for pool in pools:
        tokens = token_tensor(model.vocabulary, [scene.caption for scene in pool], config.max_words)
        scored = alignment_scores(
            model.image(_images(pool)).numpy(),
            model.sentence(tokens).numpy(),
            (tokens != model.vocabulary.pad_id).numpy(),
        ).scores
        for direction, matrix in (("image_to_sentence", scored), ("sentence_to_image", scored.T)):
            for k, value in recall_at(matrix, RECALL_KS).items():
                recalls.setdefault(f"{direction}_r{k}", []).append(value)
    mean = {name: float(np.mean(values)) for name, values in recalls.items()}
    return Quality(
        metric="image_to_sentence_r1",
        value=mean["image_to_sentence_r1"],
        threshold=RECALL_THRESHOLD,
        gates=(Bar("sentence_to_image_r1", mean["sentence_to_image_r1"], RECALL_THRESHOLD),),
        details={**mean, "pools": len(pools), "pool_size": POOL_SIZE, "chance_r1": 1 / POOL_SIZE},
    )


SENTENCE_SUFFIX = "_sentence"
VOCABULARY_FILE = "vocabulary.txt"


def region_boxes(grid: int) -> list[list[float]]:
    """Each region's box [x1, y1, x2, y2] as fractions of the model's input: the whole image, then the cells."""
    cells = [[c / grid, r / grid, (c + 1) / grid, (r + 1) / grid] for r in range(grid) for c in range(grid)]
    return [[0.0, 0.0, 1.0, 1.0], *cells]


class AlignFamily:
    """Registry entry. The vocabulary is the captioner's (the words of the synthetic captions)."""

    name = "align"
    task = ALIGN
    configs: Mapping[str, AlignConfig] = {"small": SMALL, "full": FULL}

    def build(self, config: FamilyConfig) -> nn.Module:
        return Aligner(narrow(config, AlignConfig, self.name), synthetic_vocabulary())

    def train(self, model: nn.Module, config: FamilyConfig, seed: int) -> nn.Module:
        return train_aligner(narrow(model, Aligner, self.name), narrow(config, AlignConfig, self.name), seed)

    def load(self, model: nn.Module, config: FamilyConfig, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        return load_state_dict_strict(model, state_dict, f"align_{config.name}")

    def evaluate(self, model: nn.Module, config: FamilyConfig, seed: int) -> Quality | None:
        if not config.trainable:
            return None
        aligner = narrow(model, Aligner, self.name).eval()
        scenes = make_scenes(EVAL_DRAW, aligner.config.image_size, seed, split=evaluation_split())
        return retrieval_quality(aligner, retrieval_pools(scenes, POOLS, POOL_SIZE))

    def graphs(self, model: nn.Module, config: FamilyConfig, seed: int) -> Sequence[GraphSpec]:
        """The image side (task align) and the sentence side (task align_sentence, suffix `_sentence`)."""
        aligner = narrow(model, Aligner, self.name).eval()
        align_config = aligner.config
        vocabulary = aligner.vocabulary
        side, words, dim = align_config.image_size, align_config.max_words, align_config.embed_dim
        rng = np.random.default_rng(seed)
        scenes = make_scenes(4, side, seed, split="validation")
        real_tokens = token_tensor(vocabulary, [scene.caption for scene in scenes], words).numpy()
        random_tokens = rng.integers(0, len(vocabulary.tokens), (3, words), dtype=np.int64)
        random_tokens[:, words // 2 :] = vocabulary.pad_id
        image = GraphSpec(
            module=aligner.image,
            inputs=(TensorSpec(IMAGES, (3, side, side)),),
            outputs=(TensorSpec(REGIONS, (align_config.regions, dim)),),
            parity_cases=(
                ParityCase("real", {IMAGES: _images(scenes).numpy()}),
                ParityCase("random", {IMAGES: rng.standard_normal((3, 3, side, side), np.float32)}),
            ),
            max_batch_size=align_config.max_batch_size,
            task=self.task,
            parameters={
                PREPROCESSING_PARAMETER: preprocessing_parameter((side, side), DEFAULT_MEAN, DEFAULT_STD),
                SENTENCE_MODEL_PARAMETER: model_name(self.name, config.name, SENTENCE_SUFFIX),
                VOCABULARY_PARAMETER: VOCABULARY_FILE,
                PAD_TOKEN_PARAMETER: str(vocabulary.pad_id),
                MAX_WORDS_PARAMETER: str(words),
                REGIONS_PARAMETER: json.dumps(region_boxes(align_config.grid)),
            },
            extra_files={VOCABULARY_FILE: "\n".join(vocabulary.tokens) + "\n"},
        )
        sentence = GraphSpec(
            module=aligner.sentence,
            inputs=(TensorSpec(TOKENS, (words,), mc.TYPE_INT64),),
            outputs=(TensorSpec(WORDS, (words, dim)),),
            parity_cases=(ParityCase("real", {TOKENS: real_tokens}), ParityCase("random", {TOKENS: random_tokens})),
            max_batch_size=align_config.max_batch_size,
            task=ALIGN_SENTENCE,
            suffix=SENTENCE_SUFFIX,
            # The embedding lookup fails a whole batch on a token id outside the vocabulary.
            parameters={INPUT_RANGES_PARAMETER: input_ranges_parameter({TOKENS: (0, len(vocabulary.tokens) - 1)})},
        )
        return (image, sentence)

    def system_parity(
        self, model: nn.Module, config: FamilyConfig, graphs: Sequence[GraphSpec], run: OnnxRunner
    ) -> Sequence[ParityCheck]:
        return ()


register_family(AlignFamily())
