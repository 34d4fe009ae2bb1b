"""Drive a server with the real Triton client (tritonclient.grpc) and print what happened as JSON.

Runs as its own process: tritonclient's generated `inference.*` modules clash with ninefold's in
one process. The test writes a plan (JSON) and the input arrays (.npz); this script runs every step
in order and prints one JSON list, one entry per step: {"ok": true, "value": ...} or
{"ok": false, "status": "INVALID_ARGUMENT", "message": ...}. Output tensors go to OUT.npz under
"<step index>/<output name>".

Usage: python triton_runner.py URL PLAN.json INPUTS.npz OUT.npz

Steps ({"op": ..., ...}):
  live | ready | server_metadata | repository_index
  model_ready / model_metadata / model_config {"model", "version"?}
  statistics {"model"?}
  load / unload {"model", "token"?}
  infer {"model", "inputs": [{"name", "datatype", "array"} | {"name", "datatype", "shape", "raw_hex"}
                            | {"name", "datatype", "shape", "shm": {"region", "byte_size", "offset"?}}],
         "outputs"?: [{"name", "class_count"?, "shm"?}], "id"?, "version"?}
  shm_register {"name", "key", "byte_size", "offset"?} | shm_status {"name"?} | shm_unregister {"name"?}
  stream {"requests": [infer step, ...]}  one ModelStreamInfer stream, responses in arrival order
  concurrent {"requests": [infer step, ...]}  all sent at once with async_infer
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException

TIMEOUT_S = 60.0


def _status(error: InferenceServerException) -> str:
    return (error.status() or "").removeprefix("StatusCode.")


def _inputs(step: dict, arrays: Any) -> list[grpcclient.InferInput]:
    inputs = []
    for spec in step["inputs"]:
        if "shm" in spec:  # the tensor is in a registered system shared memory region
            tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_shared_memory(spec["shm"]["region"], spec["shm"]["byte_size"], spec["shm"].get("offset", 0))
        elif "raw_hex" in spec:  # a deliberately malformed payload: declared shape, bytes as given
            tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor._raw_content = bytes.fromhex(spec["raw_hex"])
        else:
            array = arrays[spec["array"]]
            tensor = grpcclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _outputs(step: dict) -> list[grpcclient.InferRequestedOutput] | None:
    if "outputs" not in step:
        return None
    outputs = []
    for spec in step["outputs"]:
        output = grpcclient.InferRequestedOutput(spec["name"], class_count=spec.get("class_count", 0))
        if "shm" in spec:
            output.set_shared_memory(spec["shm"]["region"], spec["shm"]["byte_size"], spec["shm"].get("offset", 0))
        outputs.append(output)
    return outputs


def _result(result: grpcclient.InferResult, index: str, out: dict[str, np.ndarray]) -> dict:
    response = result.get_response()
    described = []
    for tensor in response.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if "shared_memory_region" in tensor.parameters:  # the data is in the region, not the response
            entry["parameters"] = {k: MessageToDict(v) for k, v in tensor.parameters.items()}
        else:
            out[f"{index}/{tensor.name}"] = result.as_numpy(tensor.name)
        described.append(entry)
    return {"model_name": response.model_name, "model_version": response.model_version, "id": response.id,
            "outputs": described}


def _infer_kwargs(step: dict, arrays: Any) -> dict:
    return {"model_name": step["model"], "inputs": _inputs(step, arrays), "outputs": _outputs(step),
            "model_version": step.get("version", ""), "request_id": step.get("id", "")}


def _stream(client: grpcclient.InferenceServerClient, step: dict, arrays: Any, index: int, out: dict) -> list:
    arrived: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: arrived.put((result, error)))
    try:
        for request in step["requests"]:
            client.async_stream_infer(**_infer_kwargs(request, arrays))
        answers = []
        for position in range(len(step["requests"])):
            result, error = arrived.get(timeout=TIMEOUT_S)
            if error is not None:
                answers.append({"ok": False, "status": _status(error), "message": error.message()})
            else:
                answers.append({"ok": True, "value": _result(result, f"{index}.{position}", out)})
        return answers
    finally:
        client.stop_stream()


def _concurrent(client: grpcclient.InferenceServerClient, step: dict, arrays: Any, index: int, out: dict) -> list:
    arrived: queue.Queue = queue.Queue()
    for position, request in enumerate(step["requests"]):
        client.async_infer(callback=lambda r, e, p=position: arrived.put((p, r, e)), **_infer_kwargs(request, arrays))
    answers: list = [None] * len(step["requests"])
    for _ in step["requests"]:
        position, result, error = arrived.get(timeout=TIMEOUT_S)
        if error is not None:
            answers[position] = {"ok": False, "status": _status(error), "message": error.message()}
        else:
            answers[position] = {"ok": True, "value": _result(result, f"{index}.{position}", out)}
    return answers


def run_step(client: grpcclient.InferenceServerClient, step: dict, arrays: Any, index: int, out: dict) -> Any:
    """Run one step and return its JSON-able value; raises InferenceServerException on a server error."""
    op = step["op"]
    model = step.get("model", "")
    version = step.get("version", "")
    headers = {"authorization": f"Bearer {step['token']}"} if step.get("token") else None
    simple = {
        "live": lambda: client.is_server_live(),
        "ready": lambda: client.is_server_ready(),
        "server_metadata": lambda: client.get_server_metadata(as_json=True),
        "repository_index": lambda: client.get_model_repository_index(as_json=True),
        "model_ready": lambda: client.is_model_ready(model, version),
        "model_metadata": lambda: client.get_model_metadata(model, version, as_json=True),
        "model_config": lambda: client.get_model_config(model, version, as_json=True),
        "statistics": lambda: client.get_inference_statistics(model, version, as_json=True),
        "load": lambda: client.load_model(model, headers=headers),
        "unload": lambda: client.unload_model(model, headers=headers),
        "shm_register": lambda: client.register_system_shared_memory(
            step["name"], step["key"], step["byte_size"], step.get("offset", 0)),
        "shm_status": lambda: client.get_system_shared_memory_status(step.get("name", ""), as_json=True),
        "shm_unregister": lambda: client.unregister_system_shared_memory(step.get("name", "")),
    }
    if op in simple:
        return simple[op]()
    if op == "infer":
        return _result(client.infer(client_timeout=TIMEOUT_S, **_infer_kwargs(step, arrays)), str(index), out)
    if op == "stream":
        return _stream(client, step, arrays, index, out)
    if op == "concurrent":
        return _concurrent(client, step, arrays, index, out)
    raise ValueError(f"unknown op {op!r}")


def main(argv: list[str]) -> int:
    url, plan_path, inputs_path, out_path = argv
    with open(plan_path) as handle:
        plan = json.load(handle)
    arrays = np.load(inputs_path, allow_pickle=True)
    out: dict[str, np.ndarray] = {}
    results = []
    with grpcclient.InferenceServerClient(url) as client:
        for index, step in enumerate(plan):
            try:
                value = run_step(client, step, arrays, index, out)
                if hasattr(value, "DESCRIPTOR"):
                    value = MessageToDict(value)
                results.append({"ok": True, "value": value})
            except InferenceServerException as error:
                results.append({"ok": False, "status": _status(error), "message": error.message()})
    np.savez(out_path, **out)
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
