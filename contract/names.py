"""The names export writes and serving reads: platforms, tasks, tensors and config.pbtxt parameters.

docs/MODEL_REPOSITORY.md documents each of them; a name changes here or nowhere.
"""

from __future__ import annotations

ONNX_PLATFORM = "onnxruntime_onnx"
"""config.pbtxt `platform` of an ONNX model (what the export writes; Triton's name)."""

# Values of the `task` parameter.
CLASSIFY = "classify"
DETECT = "detect"
CAPTION = "caption"
GENERATE = "generate"
WARP = "warp"
ALIGN = "align"
EXPLAIN = "explain"
CAPTION_DECODER = "caption_decoder"
"""A captioner's step graph: a model the caption task drives, never a task a request names."""
ALIGN_SENTENCE = "align_sentence"
"""An aligner's sentence graph: a model the align task drives, never a task a request names."""

TASKS: tuple[str, ...] = (CLASSIFY, DETECT, CAPTION, GENERATE, WARP, ALIGN, EXPLAIN)
"""The tasks a request can name (one Vision RPC each)."""
HELPER_TASKS: tuple[str, ...] = (CAPTION_DECODER, ALIGN_SENTENCE)
"""Tasks of the second graph of a two-graph task: never a default model, never answering an RPC of their own;
their main model names them."""
MODEL_TASKS: tuple[str, ...] = (*TASKS, *HELPER_TASKS)
"""Every value the `task` parameter may hold."""

# Tensor names per task (docs/MODEL_REPOSITORY.md, "Tensor signatures per task").
IMAGES = "images"
"""The preprocessed images (FP32 [B, 3, H, W]) of every image-input model; also the generator's output."""
LOGITS = "logits"
BOXES = "boxes"
SCORES = "scores"
LABELS = "labels"
NUM_DETECTIONS = "num_detections"
IMAGE_SIZES = "image_sizes"
"""A letterbox detector's second input: FP32 [B, 2], each image's resized (height, width) in its canvas."""
LATENT = "z"
WARPED = "warped"
THETA = "theta"
STATE_H = "h"
STATE_C = "c"
TOKEN = "token"
LOGPROBS = "logprobs"
STATE_H_OUT = "h_out"
STATE_C_OUT = "c_out"
REGIONS = "regions"
"""The aligner's region embeddings (FP32 [B, R, D]); its sentence graph maps TOKENS to WORDS."""
TOKENS = "tokens"
WORDS = "words"
LAYER = "layer"
"""A DeconvNet's inputs beside IMAGES: the 1-based layer and the channel's rank (0 = strongest), INT64 [B, 1]."""
RANK = "rank"
CLASS = "class"
"""A DeconvNet's class input, INT64 [B, 1]: rank the layer's channels by their contribution to this class's
logit; -1 = by their peak activation. Graphs exported before the class mode lack it."""
PROJECTION = "projection"
"""A DeconvNet's outputs: the projection FP32 [B, 3, H, W], the channel, its activation and its map position,
the channel's contribution to the class's logit (FP32 [B, 1], 0 by peak) and the classifier's LOGITS."""
CHANNEL = "channel"
ACTIVATION = "activation"
POSITION = "position"
CONTRIBUTION = "contribution"

# config.pbtxt parameter keys (all string_value).
TASK_PARAMETER = "task"
FAMILY_PARAMETER = "family"
DEFAULT_PARAMETER = "default"
PREPROCESSING_PARAMETER = "preprocessing"
INPUT_RANGES_PARAMETER = "input_ranges"
OUTPUT_RANGE_PARAMETER = "output_range"
BELOW_THRESHOLD_PARAMETER = "below_threshold"
"""The bars a model exported with --allow-below-threshold missed; the server warns when it loads it."""
PRECISION_PARAMETER = "precision"
"""The arithmetic inside the graph: `fp16` (FP32 inputs and outputs, cast inside); fp32 where absent."""
DECODER_MODEL_PARAMETER = "decoder_model"
VOCABULARY_PARAMETER = "vocabulary"
START_TOKEN_PARAMETER = "start_token"
END_TOKEN_PARAMETER = "end_token"
MAX_LENGTH_PARAMETER = "max_length"
TRANSFORM_PARAMETER = "transform"
"""A warp model's transform: `affine`, `projective` or `tps` (thin-plate spline)."""
DEFAULT_TRANSFORM = "affine"
"""The transform of a warp model whose config has no `transform` parameter (exported before there were others)."""
SENTENCE_MODEL_PARAMETER = "sentence_model"
PAD_TOKEN_PARAMETER = "pad_token"
MAX_WORDS_PARAMETER = "max_words"
REGIONS_PARAMETER = "regions"

# Values of the `precision` parameter (ninefold export --precision).
FP32 = "fp32"
FP16 = "fp16"
PRECISIONS: tuple[str, ...] = (FP32, FP16)


def precision_model_name(name: str, precision: str) -> str:
    """The model `name` exported at `precision`: `name` itself in fp32 (the default), else `<name>_<precision>`
    (resnet_full_fp16), a model of its own beside the fp32 one."""
    return name if precision == FP32 else f"{name}_{precision}"
