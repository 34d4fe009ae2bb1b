"""config.pbtxt: what contract.model_config renders it reads back as the same message, and it reads Triton's."""

from __future__ import annotations

import pytest

from contract import model_config
from contract.names import TASK_PARAMETER
from contract.tensors import TensorSpec
from protos.inference import model_config_pb2 as mc


def test_a_config_reads_back_as_the_message_it_was_rendered_from() -> None:
    config = mc.ModelConfig(name="m", platform="onnxruntime_onnx", max_batch_size=8)
    model_config.add_inputs(config, [TensorSpec("token", (1,), mc.TYPE_INT64), TensorSpec("h", (-1,))])
    model_config.add_outputs(config, [TensorSpec("logits", (5,), label_filename="labels.txt")])
    config.dynamic_batching.preferred_batch_size.extend([2, 4])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0, 1])
    model_config.set_parameters(config, {TASK_PARAMETER: "classify", "preprocessing": '{"size": [8, 8]}\n"x"'})
    parsed = model_config.parse(model_config.render(config))
    assert parsed.config == config and parsed.ignored == ""
    assert model_config.parameters(parsed.config) == {"task": "classify", "preprocessing": '{"size": [8, 8]}\n"x"'}
    assert [(t.name, t.data_type, list(t.dims)) for t in parsed.config.input] == [
        ("token", mc.TYPE_INT64, [1]),
        ("h", mc.TYPE_FP32, [-1]),
    ]
    assert parsed.config.output[0].label_filename == "labels.txt"


def test_triton_fields_outside_the_subset_are_skipped_and_named() -> None:
    text = 'name: "m"\nmodel_warmup [ { name: "zeros" batch_size: 1 } ]\nmax_batch_size: 4\n'
    parsed = model_config.parse(text)
    assert parsed.config.name == "m" and parsed.config.max_batch_size == 4
    assert "model_warmup" in parsed.ignored


def test_text_that_is_no_model_config_raises_with_its_position() -> None:
    with pytest.raises(model_config.ConfigSyntaxError, match="2:"):
        model_config.parse('name: "m"\nmax_batch_size: "eight"\n')
