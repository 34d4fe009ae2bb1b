"""ninefold's Open Inference Protocol proto is wire-identical to the one Triton's own client ships."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("describe_proto.py")


def describe(module: str) -> dict:
    """Run describe_proto.py in its own process: the two modules cannot share one process."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), module], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout)


def test_grpc_service_matches_tritonclient_field_by_field() -> None:
    ours = describe("protos.inference.grpc_service_pb2")
    theirs = describe("tritonclient.grpc.service_pb2")
    assert ours["package"] == theirs["package"] == "inference"
    assert ours["services"] == theirs["services"]
    assert ours["services"]["GRPCInferenceService"]  # not vacuously equal
    differing = {
        name: (ours["messages"].get(name), theirs["messages"].get(name))
        for name in set(ours["messages"]) | set(theirs["messages"])
        if ours["messages"].get(name) != theirs["messages"].get(name)
    }
    assert not differing


def test_model_config_subset_uses_tritons_names_and_numbers() -> None:
    """Every ModelConfig field ninefold declares exists in Triton's with the same number and type."""
    ours = describe("protos.inference.model_config_pb2")
    theirs = describe("tritonclient.grpc.model_config_pb2")
    assert ours["enums"]["DataType"] == theirs["enums"]["DataType"]
    for name, fields in ours["messages"].items():
        assert name in theirs["messages"], f"{name} is not a Triton message"
        for field in fields:
            assert field in theirs["messages"][name], f"{name}.{field[0]} differs from Triton's"
